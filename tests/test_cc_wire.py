"""`baton cc`'s own small pieces (cli/cc.py, cli/ccwire.py): the job record it writes
without `json` reads back with `json` whatever the file names, and a frame
over a real unix socket comes back as it was sent."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli import ccwire
from cli.cc import JOBS_LOG, record

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("source", ['a "quoted" \\ name\n.c', "caf\u00e9.c", os.fsdecode(b"bad\xff.c"), "\x01.c"])
def test_a_job_record_is_one_json_line_whatever_the_source_is_called(tmp_path, source):
    job = {"source": source, "helper": "local", "started": 1.5, "exit_code": 0, "why_local": None, "ok": True,
           "extra": {"list": [1, source]}}
    record(str(tmp_path), job)
    record(str(tmp_path), job)
    lines = (tmp_path / JOBS_LOG).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and [json.loads(line) for line in lines] == [job, job]


def test_a_frame_crosses_a_unix_socket_whole(tmp_path):
    message = {"argv": ["gcc", "-c", "a.c"], "object": os.urandom(3 * 1024 * 1024), "exit_code": 0}
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        sender = threading.Thread(target=ccwire.send, args=(left, message))
        sender.start()
        assert ccwire.receive(right) == message
        sender.join()
        left.sendall((5).to_bytes(8, "big") + b"\x00\x01")
        left.close()
        with pytest.raises(ConnectionError):
            ccwire.receive(right)


def test_the_wrapper_imports_nothing_heavy():
    """`baton cc` runs once per compile: json, re, socket, subprocess, dataclasses and
    grpc cost it milliseconds each (python -X importtime)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cli.cc, cli.cc_args, cli.ccwire; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not loaded & {"json", "re", "socket", "subprocess", "dataclasses", "grpc", "enum", "typing"}
