"""`baton build submit` refuses a build file over the limit before sending it, and
the API client reports a 413 from the server as "too large"."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cli.api_client import ApiClient, ApiError
from cluster.buildfile import MAX_BUILD_BYTES

ROOT = Path(__file__).resolve().parents[1]


def test_a_build_file_over_the_limit_is_refused_locally(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ntasks:\n  - id: a\n    cmd: " + "x" * MAX_BUILD_BYTES + "\n")
    # Nothing listens on port 1: a refusal that names the size cannot come from a server.
    done = subprocess.run([sys.executable, "-m", "cli", "build", "submit", str(big), "--url", "http://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ))
    assert done.returncode == 2, done.stderr
    assert "too large" in done.stderr and "1 MiB" in done.stderr and "cannot reach" not in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def server_413():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "the request is larger than 1024 KiB"}).encode()
            self.send_response(413)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_413_from_the_server_is_reported_as_too_large(server_413):
    with pytest.raises(ApiError) as info:
        ApiClient(server_413, user="admin", password="pw").submit_build(b"name: x\n", "b.yaml")
    assert info.value.status == 413
    assert "too large" in str(info.value)
