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


def _scrape(client) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def test_metrics_from_the_daemon_state_file(client, cluster):
    values = _scrape(client)
    assert values[("baton_is_leader", ())] == 1
    assert values[("baton_epoch", ())] == cluster.epoch
    assert values[("baton_failovers_total", ())] == 2
    assert values[("baton_agents_connected", ())] == 3
    assert values[("baton_tasks_dispatched_total", ())] == 17
    assert values[("baton_lease_renewal_latency_seconds", ())] == 0.004
    # From the cluster snapshot: every agent and build state has a line, zero or not.
    assert values[("baton_builds", (("state", "running"),))] == 0
    assert values[("baton_agents", (("state", "idle"),))] >= 0
    cluster.write_state("p1", acting=False)
    assert _scrape(client)[("baton_is_leader", ())] == 0


def test_large_counters_and_epochs_are_exact(client, cluster):
    """%g made 1,234,567 into 1.23457e+06, so neighbouring epochs looked the same."""
    cluster.write_state("p1", tasks_dispatched=1234567, epoch=123456789)
    values = _scrape(client)
    assert values[("baton_tasks_dispatched_total", ())] == 1234567
    assert values[("baton_epoch", ())] == 123456789


def test_histograms_and_process_metrics_come_from_the_daemon(client, cluster):
    import os

    cluster.write_state("p1", pid=os.getpid(), histograms={"task_duration_seconds": {
        "buckets": [[0.1, 2], [1.0, 5], ["+Inf", 6]], "sum": 7.5, "count": 6}})
    values = _scrape(client)
    assert values[("baton_task_duration_seconds_bucket", (("le", "1.0"),))] == 5
    assert values[("baton_task_duration_seconds_count", ())] == 6
    assert values[("baton_task_duration_seconds_sum", ())] == 7.5
    assert values[("baton_daemon_process_resident_memory_bytes", ())] > 0


def test_metrics_survive_an_unreachable_etcd(cluster):
    dead_etcd = cluster.app("p1", BATON_ETCD=f"http://127.0.0.1:{free_port()}", BATON_ETCD_TIMEOUT=0.5)
    cluster.write_state("p1")
    values = _scrape(dead_etcd.test_client())
    assert values[("baton_tasks_dispatched_total", ())] == 17
    assert not any(name == "baton_builds" for name, _ in values)


def test_livez_does_not_ask_etcd_and_readyz_does(cluster):
    """A liveness probe that failed during an etcd outage would restart every coordinator."""
    dead_etcd = cluster.app("p1", BATON_ETCD=f"http://127.0.0.1:{free_port()}", BATON_ETCD_TIMEOUT=0.5,
                            BATON_LIVENESS_MAX_AGE=30)
    cluster.write_state("p1")
    web = dead_etcd.test_client()
    assert web.get("/livez").status_code == 200
    assert web.get("/readyz").status_code == 503
    state = json.loads(open(cluster.state_path("p1")).read())
    state["updated"] -= 60
    with open(cluster.state_path("p1"), "w") as f:
        json.dump(state, f)
    response = web.get("/livez")
    assert response.status_code == 503 and "has not reported" in response.get_json()["reason"]


def test_backup_endpoint_is_200_only_on_the_selected_backup(cluster):
    from cluster.keys import encode

    b1 = cluster.app("b1", BATON_ROLE="backup", BATON_PRIMARY="p1").test_client()
    assert b1.get("/backup").status_code == 503
    cluster.etcd.put(cluster.keys.settings, encode({"selected_backup": "b1"}))
    response = b1.get("/backup")
    assert response.status_code == 200 and response.get_json()["selected_backup"] == "b1"
    assert cluster.app("p1").test_client().get("/backup").status_code == 503


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
