"""What a coordinator writes to its log (real etcd, cycles driven directly, no sleeps).

An idle cluster logs a decision when it changes, not every cycle: an operator
reads the log of a quiet night in a few lines (docs/design.md section 5).
"""
from __future__ import annotations

import json
import logging

from cluster.logs import JsonFormatter
from cluster.settings import Settings
from coordinator.config import CoordinatorConfig, Timings
from coordinator.daemon import Coordinator
from lease.client import EtcdConfig
from tests.harness.ports import free_port


class Clock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


def coordinator(tmp_path, etcd_url, cluster, name, role, wall):
    config = CoordinatorConfig(name=name, role=role, primary="p1" if role == "backup" else None,
                               grpc=f"127.0.0.1:{free_port()}", web="127.0.0.1:1", cluster=cluster,
                               etcd=EtcdConfig.from_urls(etcd_url), timings=Timings(ttl=2))
    c = Coordinator(config, str(tmp_path / name), wall=wall)
    c.start()
    return c


def test_an_idle_primary_with_its_selected_backup_logs_only_changes(tmp_path, etcd_url, etcd, keys, caplog):
    wall = Clock()
    p1 = coordinator(tmp_path, etcd_url, keys.cluster, "p1", "primary", wall)
    b1 = coordinator(tmp_path, etcd_url, keys.cluster, "b1", "backup", wall)
    try:
        etcd.put(keys.settings, Settings(selected_backup="b1").to_json())
        for _ in range(10):  # p1 campaigns, takes up leadership, starts recording contact
            p1.cycle(), b1.cycle()
            wall.now += 0.5
        caplog.clear()
        with caplog.at_level(logging.INFO):
            # 200 idle cycles of each (100 s at the 0.5 s cycle): the contact with b1 is
            # recorded every second all along, yet nothing changes.
            for _ in range(200):
                p1.cycle(), b1.cycle()
                wall.now += 0.5
        assert p1.cycle().action in ("none", "touch_contact")
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) <= 2, lines
    finally:
        b1.stop()
        p1.stop()


def test_json_log_lines_carry_time_level_logger_message_and_name():
    formatter = JsonFormatter(daemon="p1")
    record = logging.LogRecord("baton.coordinator", logging.WARNING, __file__, 1, "lease lost: %s", ("x",), None)
    line = formatter.format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "WARNING" and doc["logger"] == "baton.coordinator"
    assert doc["message"] == "lease lost: x" and doc["name"] == "p1"
    assert doc["time"].endswith("Z") and doc["time"][:2] == "20"


def test_json_log_lines_keep_a_traceback_in_one_line():
    formatter = JsonFormatter(daemon="a1")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        import sys
        record = logging.LogRecord("agent", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]
