"""Which failback delay a backup waits: the cluster setting if an admin saved one, else its own flag."""
import pytest

from coordinator.config import CoordinatorConfig, Timings
from coordinator.daemon import Coordinator
from coordinator.ha import Snapshot
from cluster.settings import Settings, validate_update


def backup(tmp_path, delay):
    config = CoordinatorConfig(name="b1", role="backup", primary="p1", grpc="127.0.0.1:1", web="127.0.0.1:2",
                               timings=Timings(ttl=2, failback_delay=delay))
    return Coordinator(config, str(tmp_path))  # nothing starts until start()


def test_backup_flag_applies_until_the_setting_is_saved(tmp_path):
    b1 = backup(tmp_path, 1.5)
    assert Settings().failback_delay is None
    assert b1._me(Snapshot(leader=None, coordinators={}, settings=Settings())).failback_delay == 1.5
    saved = Settings.from_json(b'{"failback_delay": 7}')
    assert b1._me(Snapshot(leader=None, coordinators={}, settings=saved)).failback_delay == 7


@pytest.mark.parametrize("value,ok", [(None, True), (0, True), (2.5, True), (-1, False), ("x", False)])
def test_failback_delay_setting_validation(value, ok):
    if ok:
        assert validate_update({"failback_delay": value}) == {"failback_delay": None if value is None else float(value)}
    else:
        with pytest.raises(ValueError):
            validate_update({"failback_delay": value})
