"""`baton run` with helpers (docs/design.md section 8), all real: etcd, a
coordinator, two agents serving compile jobs, make, gcc. Compiles go to the
agents and come back byte-identical; a helper killed mid-build or no
coordinator at all costs time, never the build. The build and its jobs are
recorded in the cluster and served by the API, through a failover too."""
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

from cluster.records import JobRecord
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
    # A macro GCC's unasked stdc-predef.h defines (glibc): the helper compiles with -nostdinc,
    # where GCC includes it not, so the helper names it (agent.compile_job), else this object differs.
    (where / "main.c").write_text('#include "common.h"\n#ifdef __STDC_ISO_10646__\nint iso_10646 = 1;\n#endif\n'
                                  f'int main(void) {{ printf("%d\\n", {total}); return 0; }}\n')
    return where


def expected(sources: int = 20, weight: int = 20) -> str:
    return f"{sources * sum(3 + k for k in range(weight))}\n"


def baton_run(cluster, cwd: Path, tmp: Path, *command: str, wait: float = 5.0,
              options: tuple[str, ...] = (), env: dict | None = None, check: bool = True) -> tuple[dict, str]:
    """`baton run --json -- command` on the cluster: its summary and its stderr.
    `env`: more environment; check: its exit code must be 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_WRAPPER_DIR=str(tmp / "wrappers"), TMPDIR=str(tmp),
               **(env or {}))
    argv = [sys.executable, "-m", "cli", "run", "--json", "--etcd", cluster.etcd_urls, "--cluster", cluster.cluster,
            "--agent-token-file", str(cluster.dir / "agent-token"), "--remote-wait", str(wait), *options,
            "--", *command]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["exit_code"] == done.returncode
    return figures, done.stderr


def objects(where: Path) -> dict[str, bytes]:
    """The objects and the dependency files a build made."""
    return {p.name: p.read_bytes() for p in sorted([*where.glob("*.o"), *where.glob("*.d")])}


@pytest.mark.parametrize("native", ["1", "0"], ids=["native-wrapper", "python-wrapper"])
def test_compiles_go_to_the_helpers_and_come_back_byte_identical(make_cluster, tmp_path, native):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj")
    subprocess.run(["make", "-j4"], cwd=src, check=True, capture_output=True)
    local = objects(src)
    subprocess.run(["make", "clean"], cwd=src, check=True, capture_output=True)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4", env={"BATON_CC_NATIVE": native})
    assert os.path.islink(tmp_path / "wrappers" / "cc") == (native == "1")   # cli/native built, or not asked for
    assert figures["jobs"] == 21 and figures["exit_code"] == 0
    assert figures["remote"] > 0 and set(figures["helpers"]) <= {"a1", "a2"} and figures["helpers"], stderr
    assert objects(src) == local
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected()
    assert len(local) == 42


CLIMBING_MAKEFILE = """\
SRCS = $(wildcard ../src/*.c)
OBJS = $(notdir $(SRCS:.c=.o))
app: $(OBJS)
\t$(CC) $(OBJS) -o app
%.o: ../src/%.c
\t$(CC) -O2 -g -Wall -I../include -MD -c $< -o $@
clean:
\trm -f app *.o *.d
-include *.d
"""


def climbing_project(where: Path, sources: int) -> Path:
    """A make project built in its build/ directory, as many are: -I../include, the sources
    ../src/sN.c, and `#include "../common/scale.h"` from each source and the shared header.
    Its build directory."""
    for d in ("include", "common", "src", "build"):
        (where / d).mkdir(parents=True)
    (where / "build" / "Makefile").write_text(CLIMBING_MAKEFILE)
    (where / "common" / "scale.h").write_text("#pragma once\n#define SCALE 3\n")
    (where / "include" / "funcs.h").write_text('#include <stdio.h>\n#include "../common/scale.h"\n' + "".join(
        f"int f{i}(int x);\n" for i in range(sources)))
    for i in range(sources):
        (where / "src" / f"s{i}.c").write_text(f'#include "funcs.h"\n#include "../common/scale.h"\n'
                                               f"int f{i}(int x) {{ return x * SCALE + {i}; }}\n")
    total = " + ".join(f"f{i}(1)" for i in range(sources))
    (where / "src" / "main.c").write_text(f'#include "funcs.h"\nint main(void) {{ printf("%s %d\\n", __FILE__, '
                                          f"{total}); return 0; }}\n")
    return where / "build"


def test_a_build_with_paths_that_climb_goes_remote_and_comes_back_byte_identical(make_cluster, tmp_path):
    """-I../include and ../src/sN.c compile on the helpers (they were all compiled here before),
    their files named by the include lines and, with BATON_INCLUDE_SCAN=0, by the scan: the
    objects (-g: ../src/sN.c and ../include/funcs.h as spelt) and .d files are the local ones."""
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    sources = 8
    build = climbing_project(tmp_path / "proj", sources)
    subprocess.run(["make", "-j4"], cwd=build, check=True, capture_output=True)
    local = objects(build)
    assert len(local) == 2 * (sources + 1) and b"../include/funcs.h" in local["main.d"]
    assert b"../include/../common/scale.h" in local["s0.d"]   # (#pragma once: read from funcs.h)
    for env, include_scans in (({}, sources + 1), ({"BATON_INCLUDE_SCAN": "0"}, 0)):
        subprocess.run(["make", "clean"], cwd=build, check=True, capture_output=True)
        figures, stderr = baton_run(cluster, build, tmp_path, "make", "-j4", wait=60.0, env=env)
        assert figures["jobs"] == sources + 1 and figures["exit_code"] == 0, stderr
        assert figures["remote"] == figures["jobs"], (env, stderr)    # every job: none refused, none kept here
        assert figures["include_scans"] == include_scans and figures["include_rescans"] == 0, figures
        assert objects(build) == local, env
        ran = subprocess.run(["./app"], cwd=build, capture_output=True, text=True)
        assert ran.stdout == f"../src/main.c {sum(3 + i for i in range(sources))}\n"


def test_with_tls_the_initiator_presents_a_client_certificate_and_compiles_go_remote(make_cluster, tmp_path):
    """TLS coordinators require a CA-signed client certificate on every stream, the
    initiator's Cores stream too (without one every job compiled locally)."""
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False, tls=True)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    cert, key = cluster.agent_cert("a1")  # any client certificate of the cluster's CA
    a_grant_alone_runs_nothing(cluster, cert, key, tmp_path)
    src = project(tmp_path / "proj", sources=6)
    etcd = cluster.cli_etcd_args()[4:]  # --etcd-ca and the CLI's etcd identity
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4",
                                options=(*etcd, "--grpc-ca", cluster.ca, "--tls-cert", cert, "--tls-key", key))
    assert figures["exit_code"] == 0 and figures["remote"] > 0, stderr
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(sources=6)


def a_grant_alone_runs_nothing(cluster, cert: str, key: str, tmp_path: Path) -> None:
    """A client that holds a live grant id but no certificate of the cluster's CA
    cannot run a job on a TLS helper (plaintext or TLS); with one, the same job runs."""
    import grpc

    from agent.compile_job import compiler_identity
    from cli.core_client import CoreClient
    from cluster.names import agent_server_name
    from cluster.protocol import compile_pb2 as pb
    from cluster.protocol import compile_pb2_grpc

    ca, client = Path(cluster.ca).read_bytes(), (Path(key).read_bytes(), Path(cert).read_bytes())
    cores = CoreClient(cluster.etcd_config(), cluster.cluster, "grant-probe", cluster.agent_token, ca,
                       client=client).start()
    try:
        grant, why = cores.acquire(30.0)
        assert grant is not None, why
        (tmp_path / "a.c").write_text("int f(void) { return 42; }\n")
        job = pb.CompileRequest(grant=grant.grant, epoch=grant.epoch, compiler="gcc",
                                compiler_identity=compiler_identity("gcc"), args=["-O2"], source="a.c",
                                cwd=str(tmp_path), files=[pb.SourceFile(path=str(tmp_path / "a.c"),
                                                                        content=b"int f(void) { return 42; }\n")])
        name = [("grpc.ssl_target_name_override", agent_server_name(grant.agent))]

        def run(channel):
            with channel:
                return compile_pb2_grpc.HelperStub(channel).Compile(job, timeout=30)

        for channel in (grpc.insecure_channel(grant.helper),
                        grpc.secure_channel(grant.helper, grpc.ssl_channel_credentials(ca), options=name)):
            with pytest.raises(grpc.RpcError) as refused:
                run(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = run(grpc.secure_channel(grant.helper, grpc.ssl_channel_credentials(ca, *client), options=name))
        assert (reply.refused, reply.exit_code) == ("", 0)
    finally:
        cores.stop()


def job_records(cluster, build_id: str) -> list[JobRecord]:
    """The build's jobs as the leader recorded them in etcd (coordinator/runtime/run_records.py)."""
    return [r for r in (JobRecord.parse(v) for v, _ in cluster.etcd().get_prefix(cluster.keys.build_jobs(build_id)))
            if r is not None]


def test_the_build_and_its_jobs_are_recorded_and_served_by_the_api(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj", sources=8)
    figures, stderr = baton_run(cluster, src, tmp_path, "make", "-j4")
    assert figures["recorded"] and figures["remote"] > 0 and figures["jobs"] == 9, stderr
    records = job_records(cluster, figures["id"])
    assert sorted(r.seq for r in records) == list(range(1, 10))
    remote = [r for r in records if r.remote]
    assert len(remote) == figures["remote"] and {r.helper for r in remote} <= {"a1", "a2"}
    assert {r.core for r in remote} == {0}   # one core each: slot 0 of each grant
    assert all(r.why_local and r.core is None for r in records if not r.remote)
    # When each remote job held its core: within the job's own span, and one job at a time on a core.
    assert all(r.started <= r.core_started <= r.core_finished <= r.finished for r in remote)
    for helper in {r.helper for r in remote}:
        held = sorted((r.core_started, r.core_finished) for r in remote if r.helper == helper)
        assert all(b[0] >= a[1] - 0.002 for a, b in zip(held, held[1:])), held   # ms rounding on each end
    # The leader tells the helper of a grant (Lend) and the initiator (CoreGrants) on two streams in no
    # order: a job that comes first waits for its Lend (agent/helper.py Grants.slot), it is not sent back.
    # (A grant ended meanwhile is refused, and says so: "...: the leader ended it (Unlend)".)
    assert not [r.why_local for r in records if (r.why_local or "").endswith("holds no such grant")]
    assert all(r.finished >= r.started and r.exit_code == 0 and r.source.endswith(".c") for r in records)
    build = cluster.api("p1").build(figures["id"])
    assert (build["kind"], build["state"], build["exit_code"], build["host"]) == ("run", "done", 0, os.uname().nodename)
    assert build["command"] == ["make", "-j4"] and build["counts"]["total"] == 9
    assert build["counts"]["remote"] == figures["remote"]
    assert sorted((j["seq"], j["helper"], j["duration"], j["core_started"]) for j in build["jobs"]) == \
        sorted((r.seq, r.helper, r.duration, r.core_started) for r in records)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BATON_USER="admin", BATON_PASSWORD=cluster.admin_password)
    shown = subprocess.run([sys.executable, "-m", "cli", "build", "show", figures["id"], *cluster.cli_etcd_args()],
                           capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "run: make -j4: done" in shown.stdout and "s0.c" in shown.stdout, shown.stderr
    listed = subprocess.run([sys.executable, "-m", "cli", "build", "list", *cluster.cli_etcd_args()],
                            capture_output=True, text=True, env=env, timeout=60)
    assert any(line.startswith(figures["id"]) and " run " in line for line in listed.stdout.splitlines()), listed.stdout


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


def compiling(agent) -> bool:
    """A job's compiler (cc1) runs in the agent's process group."""
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and os.getpgid(int(entry.name)) == agent.pid
                    and (entry / "comm").read_text().strip() == "cc1"):
                return True
        except OSError:   # gone meanwhile
            continue
    return False


def test_a_helper_killed_mid_job_costs_no_job(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, web=False)
    cluster.wait_agents(2)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    src = project(tmp_path / "proj", sources=40, weight=200)
    build = Build(cluster, src, tmp_path)
    wait_until(lambda: any(j["helper"] == "a1" for j in build.records()), 120, message="a job compiled on a1")
    wait_until(lambda: compiling(cluster.agents["a1"]), 120, interval=0.005, message="a1 compiling a job")
    cluster.agents["a1"].kill()
    killed = time.time()
    figures, seen = build.finish()
    assert figures["jobs"] == 41 and figures["failed"] == 0
    assert subprocess.run(["./app"], cwd=src, capture_output=True, text=True).stdout == expected(40, 200)
    assert not [j for j in seen if j["helper"] == "a1" and j["started"] > killed + 0.01]
    assert any("helper a1 failed" in j.get("why_local", "") for j in seen), "the job in flight on a1"
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
    # Every job is in the build's record, those the primary had not acknowledged sent again to the backup.
    records = job_records(cluster, figures["id"])
    assert sorted(r.seq for r in records) == list(range(1, 62)) and figures["recorded"]
    assert "b1" in {r.coordinator for r in records}
    assert [r for r in records if r.remote and r.started > led[0]], "no remote job recorded under the backup"
    assert cluster.api("b1").build(figures["id"])["state"] == "done"


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
