"""/leader, /healthz, /metrics, and the real thing: gunicorn over HTTPS as the daemon starts it."""
from __future__ import annotations

import http.cookiejar
import json
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from cli.certs import issue_cert, make_ca
from coordinator.config import CoordinatorConfig, Timings
from lease.client import EtcdConfig
from tests.harness.ports import free_port
from tests.harness.wait import wait_until
from tests.test_web_support import ADMIN_PW, app, basic, client, clock, cluster, csrf_of  # noqa: F401
from web.serve import gunicorn_argv, secret_key_for, web_env


def test_leader_endpoint_is_200_only_on_the_acting_leader(client, cluster):
    response = client.get("/leader")
    assert response.status_code == 200 and response.get_json()["leader"] is True
    cluster.write_state("p1", acting=False)
    assert client.get("/leader").status_code == 503
    cluster.write_state("p1")
    cluster.take_leadership("b1", role="backup")
    response = client.get("/leader")
    assert response.status_code == 503 and response.get_json()["current_leader"] == "b1"


def test_healthz(client, cluster, tmp_path):
    assert client.get("/healthz").status_code == 200
    state = json.loads(open(cluster.state_path("p1")).read())
    state["updated"] -= 600
    with open(cluster.state_path("p1"), "w") as f:
        json.dump(state, f)
    response = client.get("/healthz")
    assert response.status_code == 503 and "older than" in response.get_json()["reason"]
    dead_etcd = cluster.app("p1", BATON_ETCD=f"http://127.0.0.1:{free_port()}", BATON_ETCD_TIMEOUT=0.5)
    cluster.write_state("p1")
    response = dead_etcd.test_client().get("/healthz")
    assert response.status_code == 503 and "etcd" in response.get_json()["reason"]


def test_metrics_from_the_daemon_state_file(client, cluster):
    body = client.get("/metrics").get_data(as_text=True)
    values = dict(line.split(" ") for line in body.splitlines() if not line.startswith("#"))
    assert values == {"baton_is_leader": "1", "baton_epoch": str(cluster.epoch), "baton_failovers_total": "2",
                      "baton_agents_connected": "3", "baton_tasks_dispatched_total": "17",
                      "baton_lease_renewal_latency_seconds": "0.004"}
    assert "# TYPE baton_failovers_total counter" in body
    cluster.write_state("p1", acting=False)
    assert "baton_is_leader 0" in client.get("/metrics").get_data(as_text=True)


def test_gunicorn_argv():
    argv = gunicorn_argv("127.0.0.1:8000")
    assert argv[-1] == "web.wsgi:app" and "--bind" in argv and "127.0.0.1:8000" in argv
    # gthread, with request heads read under a deadline (web/worker.py).
    from gunicorn.util import load_class
    from gunicorn.workers.gthread import ThreadWorker
    assert argv[argv.index("--workers") + 1] == "2"
    assert issubclass(load_class(argv[argv.index("--worker-class") + 1]), ThreadWorker)
    assert "--certfile" not in argv
    tls = gunicorn_argv("127.0.0.1:8000", "c.pem", "k.pem")
    assert tls[tls.index("--certfile") + 1] == "c.pem" and tls[tls.index("--keyfile") + 1] == "k.pem"


def test_secret_key_is_kept_next_to_the_state_file(tmp_path):
    path = str(tmp_path / "daemon.json")
    first = secret_key_for(path)
    assert secret_key_for(path) == first and len(first) >= 32
    assert (tmp_path / "web-secret").stat().st_mode & 0o077 == 0


def test_gunicorn_serves_https_with_etcd_in_every_worker(cluster, tmp_path, etcd_url):
    ca = make_ca(tmp_path / "ca")
    cert, key = issue_cert(ca, tmp_path / "ca", "p1", ["localhost"])
    port = free_port()
    config = CoordinatorConfig(name="p1", role="primary", grpc="127.0.0.1:1", web=f"127.0.0.1:{port}",
                               cluster=cluster.keys.cluster, etcd=EtcdConfig.from_urls(etcd_url),
                               timings=Timings(ttl=60), tls_cert=str(cert), tls_key=str(key))
    cluster.write_state("p1")
    env = web_env(config, cluster.state_path("p1"))
    assert env["BATON_HTTPS"] == "1" and env["BATON_NAME"] == "p1" and env["BATON_RENEW_DEADLINE"] == "40.0"
    from web.serve import start_gunicorn
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = start_gunicorn(config, cluster.state_path("p1"), stdout=log, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.create_default_context(cafile=str(ca.cert_path))
        base = f"https://localhost:{port}"

        def healthy():
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            with urllib.request.urlopen(base + "/healthz", context=ctx, timeout=5) as r:
                return r.status == 200

        wait_until(healthy, 30, interval=0.2, message="gunicorn /healthz over HTTPS")
        # Several requests so both workers answer: each made its own etcd client after fork.
        for _ in range(6):
            request = urllib.request.Request(base + "/api/v1/status", headers=basic())
            with urllib.request.urlopen(request, context=ctx, timeout=5) as r:
                assert json.loads(r.read())["is_leader"] is True
        # A browser-style login: CSRF token from the form, a Secure session cookie back.
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                             urllib.request.HTTPCookieProcessor(jar))
        token = csrf_of(opener.open(base + "/login", timeout=5).read().decode())
        form = urllib.parse.urlencode({"username": "admin", "password": ADMIN_PW, "csrf_token": token}).encode()
        page = opener.open(base + "/login", data=form, timeout=5)
        assert page.url.rstrip("/") == base and "Overview" in page.read().decode()
        assert all(c.secure for c in jar)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            plain_works = True
        except (urllib.error.URLError, ConnectionError, OSError):
            plain_works = False
        assert not plain_works  # HTTPS only
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_config_from_env_and_refusals():
    import pytest

    from lease.errors import ConfigError
    from web.config import from_env, normalise
    cfg = normalise(from_env({"BATON_NAME": "b1", "BATON_ROLE": "backup", "BATON_PRIMARY": "p1",
                              "BATON_HTTPS": "1", "BATON_RENEW_DEADLINE": "4.5", "UNRELATED": "x"}))
    assert (cfg["BATON_NAME"], cfg["BATON_ROLE"], cfg["BATON_PRIMARY"], cfg["BATON_HTTPS"],
            cfg["BATON_RENEW_DEADLINE"]) == ("b1", "backup", "p1", True, 4.5)
    assert "UNRELATED" not in cfg and len(cfg["SECRET_KEY"]) >= 32
    with pytest.raises(ConfigError, match="BATON_NAME"):
        normalise({"SECRET_KEY": "k"})
    with pytest.raises(ConfigError, match="BATON_ROLE"):
        normalise({"BATON_NAME": "p1", "BATON_ROLE": "boss", "SECRET_KEY": "k"})


def test_python_m_web_needs_a_name():
    import os
    import sys
    env = {k: v for k, v in os.environ.items() if k != "BATON_NAME"}
    result = subprocess.run([sys.executable, "-m", "web"], env=env, capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2 and "BATON_NAME" in result.stderr
