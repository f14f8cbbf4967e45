"""Jobs whose files the include lines named (cli/include_scan.py), against a real helper:
the helper's compile writes the dependency file, byte-identical to a local compile's; and
the safety net, when a header was missed (injected here: the include lines of supported
code name a superset), is a compile here with the compiler's own words, never a failed
build. The job server runs in the test's process so that the scanner can be given a fault."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cli.core_client import CoreClient
from cli.job_server import JobServer
from tests.harness.wait import wait_until

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


def source_tree(where: Path) -> Path:
    (where / "include" / "proj").mkdir(parents=True)
    (where / "include" / "proj" / "a.h").write_text("#include <stddef.h>\n#define A_SIZE sizeof(size_t)\n")
    (where / "a.c").write_text('#include <proj/a.h>\n#include "b.h"\nint a(void) { return (int) A_SIZE + B; }\n')
    (where / "b.h").write_text("#define B 2\n")
    return where


def test_the_helper_writes_the_dependency_file_and_a_missed_header_compiles_here(make_cluster, tmp_path):
    cluster = make_cluster(agents=1, backups=0, cores=1, web=False)
    wait_until(lambda: len(cluster.agent_records()) == 1 and all(r.helper for r in cluster.agent_records().values()),
               30, message="a helper advertised")
    src = source_tree(tmp_path / "src")
    argv = ["gcc", "-O2", "-g", f"-I{src / 'include'}", "-MD", "-MT", "a.o", "-MF", "a.o.d", "-c", "a.c", "-o", "a.o"]
    subprocess.run(argv, cwd=src, check=True)
    local_object, local_deps = (src / "a.o").read_bytes(), (src / "a.o.d").read_bytes()
    (src / "a.o").unlink()
    (src / "a.o.d").unlink()

    cores = CoreClient(cluster.etcd_config(), cluster.cluster, "include-scan", cluster.agent_token, wait=30.0).start()
    jobs = JobServer(str(tmp_path), cores, wait=30.0).start()
    job = {"argv": argv, "cwd": str(src), "env": {"PATH": os.environ["PATH"]}}
    try:
        answer = jobs.compile(job)
        assert (answer.get("helper"), answer.get("exit_code")) == ("a1", 0), answer
        assert answer["object"] == local_object
        assert (src / "a.o.d").read_bytes() == local_deps      # written from the helper's .d
        assert (jobs.include_scan.used, jobs.rescans, jobs.scan_cache.misses) == (1, 0, 0)

        # The include lines miss proj/a.h: the helper's compile fails for want of it, a scan
        # here finds it was not sent, and the job compiles here (as the wrapper then does).
        (src / "a.o.d").unlink()
        named = jobs.include_scan.files
        jobs.include_scan.files = lambda *args: [p for p in named(*args) if not p.endswith("/proj/a.h")]
        answer = jobs.compile(job)
        assert answer == {"local": "the helper lacked a header the include lines did not name"}
        assert jobs.rescans == 1
        assert (src / "a.o.d").read_bytes() == local_deps      # the scan wrote it, as the compile will
    finally:
        jobs.stop()
        cores.stop()
