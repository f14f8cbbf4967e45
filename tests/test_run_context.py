"""`baton run` in a `baton up` directory needs no flags: the context names the
coordinators' gRPC CA, a client certificate and the cluster token (cli/context.py)."""
from __future__ import annotations

from cli.context import write_context
from cli.parser import build_parser, fill_defaults


def test_baton_run_takes_its_ca_certificate_and_token_from_the_context(tmp_path, monkeypatch):
    run = {"grpc_ca": "/c/ca.pem", "tls_cert": "/c/run.pem", "tls_key": "/c/run-key.pem",
           "agent_token_file": "/c/agent-token"}
    (tmp_path / "admin-password").write_text("pw\n")
    write_context(tmp_path, etcd="https://localhost:2379", cluster="default",
                  etcd_ca="/c/etcd-ca.pem", ca="/c/ca.pem", user="admin", password_file=tmp_path / "admin-password",
                  run=run)
    monkeypatch.delenv("BATON_GRPC_CA", raising=False)
    monkeypatch.delenv("BATON_TLS_CERT", raising=False)
    monkeypatch.delenv("BATON_TLS_KEY", raising=False)
    args = fill_defaults(build_parser().parse_args(["run", "--context", str(tmp_path), "--", "make"]))
    assert {k: getattr(args, k) for k in run} == run
    assert (args.etcd, args.etcd_ca) == ("https://localhost:2379", "/c/etcd-ca.pem")


def test_a_flag_given_to_baton_run_wins_over_the_context(tmp_path):
    (tmp_path / "admin-password").write_text("pw\n")
    write_context(tmp_path, etcd="https://localhost:2379", cluster="default", etcd_ca=None, ca=None, user="admin",
                  password_file=tmp_path / "admin-password", run={"grpc_ca": "/c/ca.pem"})
    args = fill_defaults(build_parser().parse_args(["run", "--context", str(tmp_path), "--grpc-ca", "/mine.pem",
                                                    "--", "make"]))
    assert args.grpc_ca == "/mine.pem"


def test_a_command_in_a_directory_below_baton_up_finds_its_context(tmp_path, monkeypatch):
    """`baton up` in the repository, then `cd examples/greet && baton run -- make`: the nearest
    .baton above the current directory is the context (before, only ./.baton was read, and the
    run reached whatever listened on the default etcd address, or nothing)."""
    monkeypatch.delenv("BATON_CONTEXT", raising=False)
    outer, inner = tmp_path / ".baton", tmp_path / "project" / ".baton"
    for directory, name in ((outer, "outer"), (inner, "inner")):
        directory.mkdir(parents=True)
        write_context(directory, etcd=f"https://{name}:2379", cluster="default", etcd_ca=None, ca=None,
                      user="admin", password_file=tmp_path / "pw", run={"grpc_ca": f"/{name}-ca.pem"})
    (tmp_path / "pw").write_text("x")
    deep = tmp_path / "project" / "src" / "lib"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    args = fill_defaults(build_parser().parse_args(["run", "--", "make"]))
    assert (args.etcd, args.grpc_ca) == ("https://inner:2379", "/inner-ca.pem")   # the nearest wins
    (inner / "context.json").unlink()
    args = fill_defaults(build_parser().parse_args(["run", "--", "make"]))
    assert (args.etcd, args.grpc_ca) == ("https://outer:2379", "/outer-ca.pem")
