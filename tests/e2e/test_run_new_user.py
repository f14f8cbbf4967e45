"""The way a new user runs `baton run` (README.md, docs/design.md section 8): `baton up`
in a directory (cli/local.py's LocalCluster, with the settings `baton up` uses: TLS on
the agents' gRPC, etcd with client certificates and auth) writes .baton/context.json;
then, in that directory, a plain `baton run -- make -j4` — no flags, no BATON_ settings —
finds etcd, the gRPC CA, its client certificate and the token in the context
(cli/context.py), sends the compiles to the helpers, and the cluster records the build."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.local import LocalCluster
from cluster.records import JobRecord
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc and make")

SUMMARY = re.compile(r"^baton run: (\d+) jobs \((\d+) remote, (\d+) local\), \d+ helper cores, wall [\d.]+ s, exit (\d+)$")


def new_shell(tmp: Path) -> dict:
    """What a new shell has: no BATON_ setting. Only the wrapper directory is this test's
    (its scripts name this checkout; other checkouts' runs would rewrite a shared one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    return dict(env, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(tmp / "wrappers"), TMPDIR=str(tmp))


def baton(*args: str, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_after_baton_up_a_plain_baton_run_compiles_remotely_and_is_recorded(make_cluster, tmp_path):
    project = tmp_path / "greet"
    shutil.copytree(ROOT / "examples" / "greet", project)
    cluster = make_cluster(cluster_class=lambda _dir, **kw: LocalCluster(project / ".baton", **kw),
                           agents=2, backups=0, cores=2, tls=True, etcd_tls=True)
    assert cluster.etcd_auth and cluster.ca   # as `baton up` runs it
    assert (project / ".baton" / "context.json").exists()
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 60, message="helpers advertised")
    env = new_shell(tmp_path)

    done = baton("run", "--", "make", "-j4", cwd=project, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    build_id = lines[0].removeprefix("baton run: build ")
    summary = SUMMARY.match(lines[-1])
    assert summary, done.stderr[-3000:]
    jobs, remote, local, code = map(int, summary.groups())
    assert (jobs, code) == (3, 0) and remote > 0 and remote + local == 3, done.stderr[-3000:]
    assert "no coordinator was reached" not in done.stderr
    ran = subprocess.run(["./greet"], cwd=project, capture_output=True, text=True, timeout=30)
    assert ran.stdout == "hello from the farm (16 letters)\n"

    # The cluster recorded the build and its jobs, the remote ones on the helpers.
    records = [r for r in (JobRecord.parse(v) for v, _ in cluster.etcd().get_prefix(cluster.keys.build_jobs(build_id)))
               if r is not None]
    assert sorted(r.seq for r in records) == [1, 2, 3]
    assert len([r for r in records if r.remote]) == remote and {r.helper for r in records if r.remote} <= {"a1", "a2"}
    listed = baton("build", "list", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith(build_id) and " run " in line and " done " in line
               for line in listed.stdout.splitlines()), listed.stdout
    shown = baton("build", "show", build_id, cwd=project, env=env)
    assert shown.returncode == 0 and "run: make -j4: done" in shown.stdout, shown.stderr
