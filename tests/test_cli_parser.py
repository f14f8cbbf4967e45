"""The `baton` command line without a cluster: where options may stand, --version, exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import AUTH_ERROR, FAILED, UNREACHABLE, USAGE_ERROR, exit_code_for
from cli.parser import build_parser, fill_defaults
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv):
    return fill_defaults(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("argv", [
    ("--etcd", "https://x:1", "--cluster", "c2", "build", "submit", "f.yaml"),
    ("build", "--etcd", "https://x:1", "--cluster", "c2", "submit", "f.yaml"),
    ("build", "submit", "f.yaml", "--etcd", "https://x:1", "--cluster", "c2"),
    ("--cluster", "c2", "build", "submit", "--etcd", "https://x:1", "f.yaml"),
])
def test_options_count_on_either_side_of_the_verb(argv):
    args = parse(*argv)
    assert (args.etcd, args.cluster, args.file) == ("https://x:1", "c2", "f.yaml")


def test_defaults_come_from_the_environment_then_the_contract(monkeypatch):
    monkeypatch.delenv("BATON_ETCD", raising=False)
    monkeypatch.delenv("BATON_CLUSTER", raising=False)
    args = parse("status")
    assert (args.etcd, args.cluster, args.url) == ("http://127.0.0.1:2379", "default", None)
    monkeypatch.setenv("BATON_ETCD", "http://e:2379")
    assert parse("status").etcd == "http://e:2379"
    assert parse("status", "--etcd", "http://f:2379").etcd == "http://f:2379"


def test_every_option_has_help():
    parser = build_parser()

    def walk(p):
        for action in p._actions:
            if action.option_strings and action.help is None:
                yield f"{p.prog} {action.option_strings[0]}"
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from walk(action.choices[sub])

    assert list(walk(parser)) == []


def baton(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, **(env or {})))


def test_version():
    done = baton("--version")
    assert done.returncode == 0 and done.stdout.startswith("baton ")


def test_an_unreachable_cluster_exits_4_with_one_sentence():
    done = baton("status", "--etcd", f"http://127.0.0.1:{free_port()}", "--etcd-timeout", "0.5")
    assert done.returncode == UNREACHABLE, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    done = baton("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == UNREACHABLE and "cannot reach" in done.stderr


def test_usage_errors_exit_2():
    assert baton("build", "submit").returncode == USAGE_ERROR
    assert baton("frobnicate").returncode == USAGE_ERROR


def test_exit_codes_tell_causes_apart():
    from cli.api_client import ApiError
    from lease.errors import ConfigError, EtcdAuthError, EtcdUnavailable

    assert exit_code_for(ApiError(401, "401: who are you")) == AUTH_ERROR
    assert exit_code_for(ApiError(403, "403: view only")) == AUTH_ERROR
    assert exit_code_for(ApiError(0, "cannot reach")) == UNREACHABLE
    assert exit_code_for(ApiError(400, "400: bad build file")) == USAGE_ERROR
    assert exit_code_for(ApiError(404, "404: no such build")) == FAILED
    assert exit_code_for(EtcdUnavailable("down")) == UNREACHABLE
    assert exit_code_for(EtcdAuthError("bad password")) == AUTH_ERROR
    assert exit_code_for(ConfigError("bad ttl")) == USAGE_ERROR


def test_baton_up_starts_its_own_etcd_unless_told(monkeypatch):
    monkeypatch.setenv("BATON_ETCD", "http://elsewhere:2379")
    assert not parse("up").etcd_given
    assert parse("up", "--etcd", "http://mine:2379").etcd_given


def test_every_port_of_a_base_port_cluster_lies_in_its_hundred():
    """--base-port gave gRPC and web the same first port, and the web ports fell back to random ones."""
    from cli.processes import PortPicker

    base = free_port()
    base = base - base % 100 if base % 100 < 60 else base  # any base; the test only needs a free range
    picker = PortPicker(base)
    picked = [picker.pick(preferred) for preferred in (2379, 2380, 7000, 8000, 7001, 8001, 7002, 8002)]
    assert len(set(picked)) == len(picked)
    assert all(base <= port < base + 100 for port in picked), picked


def test_a_base_port_out_of_range_is_refused():
    from cli.processes import PortPicker
    from lease.errors import ConfigError

    with pytest.raises(ConfigError, match="--base-port"):
        PortPicker(65500)


@pytest.fixture
def no_baton_env(monkeypatch):
    for name in ("BATON_ETCD", "BATON_CLUSTER", "BATON_ETCD_CA", "BATON_CA", "BATON_USER", "BATON_PASSWORD",
                 "BATON_CONTEXT", "BATON_ETCD_CERT", "BATON_ETCD_KEY"):
        monkeypatch.delenv(name, raising=False)


def make_context(directory: Path, with_cli_cert: bool = False) -> None:
    from cli.context import write_context
    from cli.processes import write_secret

    (directory / "certs").mkdir(parents=True)
    write_secret(directory / "admin-password", "kept-password-1")
    cert = key = None
    if with_cli_cert:
        cert, key = str(directory / "certs/cli.pem"), str(directory / "certs/cli-key.pem")
    write_context(directory, etcd="https://localhost:3379", cluster="c9", etcd_ca=str(directory / "certs/ca.pem"),
                  ca=str(directory / "certs/ca.pem"), user="admin", password_file=directory / "admin-password",
                  etcd_cert=cert, etcd_key=key)


def test_a_context_fills_what_flags_and_environment_do_not_give(tmp_path, monkeypatch, no_baton_env):
    make_context(tmp_path / "up", with_cli_cert=True)
    assert (tmp_path / "up" / "context.json").stat().st_mode & 0o777 == 0o600
    args = parse("status", "--context", str(tmp_path / "up"))
    assert (args.etcd, args.cluster, args.etcd_ca, args.ca) == (
        "https://localhost:3379", "c9", str(tmp_path / "up/certs/ca.pem"), str(tmp_path / "up/certs/ca.pem"))
    assert (args.user, args.password) == ("admin", "kept-password-1")
    assert args.etcd_cert == str(tmp_path / "up/certs/cli.pem")
    # Precedence: a flag, then the environment, then the context.
    assert parse("status", "--context", str(tmp_path / "up"), "--etcd", "https://flag:1").etcd == "https://flag:1"
    monkeypatch.setenv("BATON_ETCD", "https://env:1")
    monkeypatch.setenv("BATON_USER", "carol")
    monkeypatch.setenv("BATON_CONTEXT", str(tmp_path / "up"))
    args = parse("build", "show", "b-1")
    assert (args.etcd, args.cluster) == ("https://env:1", "c9")
    assert (args.user, args.password) == ("carol", None)  # the admin's password is not carol's


def test_the_default_context_is_dot_baton_here_and_optional(tmp_path, monkeypatch, no_baton_env):
    monkeypatch.chdir(tmp_path)
    assert parse("status").etcd == "http://127.0.0.1:2379"  # no .baton here: the defaults
    make_context(tmp_path / ".baton")
    assert parse("status").etcd == "https://localhost:3379"
    assert parse("status").etcd_cert is None
    assert parse("coordinator", "--name", "p1", "--role", "primary").etcd == "http://127.0.0.1:2379"


def test_a_context_that_was_asked_for_must_exist(tmp_path, no_baton_env):
    from lease.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no context.json"):
        parse("status", "--context", str(tmp_path / "nothing"))

