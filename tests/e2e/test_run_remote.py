"""`baton run` with helpers (docs/design.md section 8), all real: etcd, a
coordinator, two agents serving compile jobs, make, gcc. Compiles go to the
agents and come back byte-identical; a helper killed mid-build or no
coordinator at all costs time, never the build."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc and make")

MAKEFILE = """\
SRCS = $(wildcard s*.c) main.c
OBJS = $(SRCS:.c=.o)
app: $(OBJS)
\t$(CC) $(OBJS) -o app
%.o: %.c
\t$(CC) -O2 -g -Wall -MD -c $< -o $@
clean:
\trm -f app *.o *.d
-include *.d
"""


def project(where: Path, sources: int = 20, weight: int = 20) -> Path:
    """`sources` files of `weight` functions each, a shared header, and a main that sums them."""
    where.mkdir()
    (where / "Makefile").write_text(MAKEFILE)
    (where / "common.h").write_text("#include <stdio.h>\n#define SCALE 3\n" + "".join(
        f"int f{i}(int x);\n" for i in range(sources)))
    for i in range(sources):
        body = "".join(f"static int g{k}(int x) {{ return x * SCALE + {k}; }}\n" for k in range(weight))
        calls = " + ".join(f"g{k}(x)" for k in range(weight))
        (where / f"s{i}.c").write_text(f'#include "common.h"\n{body}int f{i}(int x) {{ return {calls}; }}\n')
    total = " + ".join(f"f{i}(1)" for i in range(sources))
    (where / "main.c").write_text(f'#include "common.h"\nint main(void) {{ printf("%d\\n", {total}); return 0; }}\n')
    return where


def expected(sources: int = 20, weight: int = 20) -> str:
    return f"{sources * sum(3 + k for k in range(weight))}\n"


def baton_run(cluster, cwd: Path, tmp: Path, *command: str, wait: float = 5.0,
              options: tuple[str, ...] = ()) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(tmp / "wrappers"), TMPDIR=str(tmp))
    argv = [sys.executable, "-m", "cli", "run", "--json", "--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
            "--agent-token-file", str(cluster.dir / "agent-token"), "--remote-wait", str(wait), *options,
            "--", *command]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def objects(where: Path) -> dict[str, bytes]:
    """The objects and the dependency files a build made."""
    return {p.name: p.read_bytes() for p in sorted([*where.glob("*.o"), *where.glob("*.d")])}


def test_compiles_go_to_the_helpers_and_come_back_byte_identical(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj")
    subprocess.run(["make", "-j4"], cwd=src, check=True, capture_output=True)
    local = objects(src)
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4")
    assert figures["jobs"] == 21 and figures["exit_code"] == 0
    assert figures["remote"] > 0 and set(figures["helpers"]) <= {"a1", "a2"} and figures["helpers"], stderr
    assert objects(src) == local
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected()
    assert len(local) == 42


def test_with_tls_the_initiator_presents_a_client_certificate_and_compiles_go_remote(make_cluster, tmp_path):
    """TLS coordinators require a CA-signed client certificate on every stream, the
    initiator's Cores stream too (without one every job compiled locally)."""
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False, tls=True)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj", sources=6)
    cert, key = cluster.agent_cert("a1")  # any client certificate of the cluster's CA
    etcd = cluster.cli_etcd_args()[4:]  # --etcd-ca and the CLI's etcd identity
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4",
                                options=(*etcd, "--grpc-ca", cluster.ca, "--tls-cert", cert, "--tls-key", key))
    assert figures["exit_code"] == 0 and figures["remote"] > 0, stderr
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(sources=6)


class Build:
    """`baton run --json -- make -jN` in the background; `records()` while it runs."""

    def __init__(self, cluster, src: Path, tmp: Path, jobs: int = 4):
        self.tmp = tmp
        env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(tmp / "wrappers"), TMPDIR=str(tmp))
        argv = [sys.executable, "-m", "cli", "run", "--json", "--etcd", cluster.etcd_urls, "--cluster",
                cluster.cluster, "--agent-token-file", str(cluster.dir / "agent-token"), "--", "make", f"-j{jobs}"]
        self.proc = subprocess.Popen(argv, cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def records(self) -> list[dict]:
        found = []
        for log in glob.glob(str(self.tmp / "baton-run-*" / "jobs.jsonl")):
            found += [json.loads(line) for line in Path(log).read_text().splitlines() if line.endswith("}")]
        return found

    def finish(self, watch=lambda: None) -> tuple[dict, list[dict]]:
        """Wait for the end, calling watch() meanwhile; the summary and the last records seen
        (the run's records go with its directory)."""
        seen = self.records()
        while self.proc.poll() is None:
            seen = self.records() or seen
            watch()
            try:
                self.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        out, err = self.proc.communicate(timeout=600)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out.splitlines()[-1]), seen


def test_a_helper_killed_mid_build_costs_no_job(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj", sources=40, weight=200)
    build = Build(cluster, src, tmp_path)
    wait_until(lambda: any(j["helper"] == "a1" for j in build.records()), 120, message="a job compiled on a1")
    cluster.agents["a1"].kill()
    killed = time.time()
    figures, seen = build.finish()
    assert figures["jobs"] == 41 and figures["failed"] == 0
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(40, 200)
    assert not [j for j in seen if j["helper"] == "a1" and j["started"] > killed + 0.01]
    assert any(j["started"] > killed for j in seen), "the build went on after the kill"


def test_the_primary_killed_mid_build_jobs_go_remote_again_once_the_backup_leads(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=1, cores=1)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj", sources=60, weight=200)
    build = Build(cluster, src, tmp_path)
    wait_until(lambda: any(j["helper"] != "local" for j in build.records()), 120, message="a remote job")
    cluster.coordinators["p1"].kill()
    led = []

    def backup_leads():
        if not led and (leader := cluster.leader()) is not None and leader.name == "b1":
            led.append(time.time())

    figures, seen = build.finish(backup_leads)
    assert figures["jobs"] == 61 and figures["failed"] == 0
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(60, 200)
    assert led, "the backup never led during the build"
    assert [j for j in seen if j["helper"] != "local" and j["started"] > led[0]], "no remote job under the backup"


def test_without_any_coordinator_the_build_compiles_here(make_cluster, tmp_path):
    cluster = make_cluster(agents=1, backups=0, cores=1, web=False)
    cluster.wait_agents(1)
    for proc in cluster.coordinators.values():
        proc.kill()
    wait_until(lambda: cluster.leader() is None, 30, message="the leader key expired")
    src = project(tmp_path / "proj", sources=4)
    figures, _ = baton_run(cluster, src, tmp_path, "make", "-j4", wait=1.0)
    assert (figures["jobs"], figures["remote"], figures["exit_code"]) == (5, 0, 0)
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(4)
