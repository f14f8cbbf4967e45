"""The primary's first-start settings (--initial-backup, BATON_INITIAL_BACKUP):
stored once, fenced, when the cluster has no settings yet; never over a later
choice. Against a real etcd, through the Leadership that a coordinator uses."""
from __future__ import annotations

import pytest

from cluster.settings import read_settings, seed_settings
from coordinator import ha
from coordinator.config import CoordinatorConfig
from coordinator.leadership import Leadership
from lease.election import Fence
from lease.errors import ConfigError, NotLeader
from lease.session import Session


class _Runtime:
    """Leadership starts and stops the runtime; these tests look at etcd only."""

    def start(self, epoch):
        pass

    def stop(self, reason, **kw):
        pass


@pytest.fixture
def session(etcd):
    s = Session(etcd, ttl=5, healthy=lambda: True).start()
    yield s
    s.close()


def _lead(etcd, keys, session, initial) -> Leadership:
    """One start of the primary p1: a fresh Leadership campaigns and takes up leadership."""
    lead = Leadership(etcd, keys, "p1", _Runtime(), b'{"name": "p1"}', wall=lambda: 0.0,
                      initial_settings=initial)
    lead.new_session(session)
    lead.campaign(ha.Takeover("leader", "p1 leads", ensure_admin=True))
    assert lead.election.epoch, "p1 should lead"
    return lead


def test_first_start_selects_the_initial_backup(etcd, keys, session, monkeypatch):
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "first-admin-pw")
    _lead(etcd, keys, session, {"selected_backup": "b1"})
    assert read_settings(etcd, keys)[0].selected_backup == "b1"


def test_a_later_choice_is_not_overridden_after_a_restart(etcd, keys, session, monkeypatch):
    monkeypatch.setenv("BATON_ADMIN_PASSWORD", "first-admin-pw")
    lead = _lead(etcd, keys, session, {"selected_backup": "b1"})
    # The admin chooses no backup (Settings › Save All writes the whole key, fenced).
    settings, _ = read_settings(etcd, keys)
    lead.election.fence().commit([etcd.ops.put(keys.settings, settings.updated({"selected_backup": None}).to_json())])
    lead.election.resign()
    # The primary restarts with the same first-start setting and leads again.
    _lead(etcd, keys, session, {"selected_backup": "b1"})
    assert read_settings(etcd, keys)[0].selected_backup is None


def test_a_backup_does_not_seed_settings(etcd, keys, session):
    lead = Leadership(etcd, keys, "b1", _Runtime(), b'{"name": "b1"}', wall=lambda: 0.0,
                      initial_settings={"selected_backup": "b2"})
    lead.new_session(session)
    lead.campaign(ha.Takeover("failover", "b1 stands in", ensure_admin=False))
    assert etcd.get(keys.settings)[0] is None


def test_seed_is_fenced(etcd, keys):
    etcd.put(keys.leader, b'{"name": "p1"}')
    epoch = etcd.get(keys.leader)[1].create_revision
    with pytest.raises(NotLeader):
        seed_settings(etcd, keys, Fence(etcd, keys.leader, epoch + 10_000), {"selected_backup": "b1"})
    assert etcd.get(keys.settings)[0] is None
    assert seed_settings(etcd, keys, Fence(etcd, keys.leader, epoch), {"selected_backup": "b1"}) is True
    assert seed_settings(etcd, keys, Fence(etcd, keys.leader, epoch), {"selected_backup": "b2"}) is False
    assert read_settings(etcd, keys)[0].selected_backup == "b1"


@pytest.mark.parametrize("kw, message", [
    ({"role": "backup", "primary": "p1"}, "for the primary"),
    ({"role": "primary"}, "not the primary itself"),
])
def test_initial_backup_is_checked_at_start(kw, message):
    name = "b1" if kw["role"] == "backup" else "p1"
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(name=name, grpc="127.0.0.1:7000", web="127.0.0.1:8000",
                          initial_backup=name if kw["role"] == "primary" else "b2", **kw)
