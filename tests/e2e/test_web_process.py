"""The UI's gunicorn lives and dies with its coordinator."""
from __future__ import annotations

import os
import signal

import pytest

from cli.local import port_free
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow


def test_ui_ends_when_its_coordinator_is_killed_and_the_port_can_be_reused(make_cluster):
    cluster = make_cluster(agents=0, backups=0)
    port = int(cluster.web_urls["p1"].rsplit(":", 1)[1])
    assert not port_free(port)
    # Only the coordinator process, not its process group: as when the OOM killer picks it.
    os.kill(cluster.coordinators["p1"].pid, signal.SIGKILL)
    cluster.coordinators["p1"].popen.wait(10)
    wait_until(lambda: port_free(port), 20, message="the orphaned UI to exit and free its port")
    cluster.add_coordinator("p1", "primary")
    cluster.wait_web("p1", timeout=30)
    assert cluster.api("p1").status()["name"] == "p1"
