"""TLS on the data path of `baton run` (docs/design.md sections 8 and 9), over
real gRPC with certificates of cli/certs.py: an agent that has TLS material
serves compile jobs only to clients with a certificate of the cluster's CA,
so a grant id alone runs nothing; the initiator accepts a helper only when
its certificate names the agent the grant was for."""
from __future__ import annotations

import shutil

import grpc
import pytest

from agent.compile_job import compiler_identity
from agent.config import AgentConfig
from agent.helper import Grants, HelperServer
from cli.certs import issue_agent_cert, make_ca
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc
from lease.errors import ConfigError
from tests.harness.cores import OneGrant, job_through_initiator

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")

SOURCE = b"int f(void) { return 42; }\n"


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Pki:
    """A cluster CA and agent certificates: `agent(name)` -> (key, certificate) PEM."""

    def __init__(self, directory):
        self.directory = directory
        self.ca = make_ca(directory / "ca")
        self.ca_pem = read(self.ca.cert_path)

    def agent(self, name: str, any_name: bool = False) -> tuple[bytes, bytes]:
        cert, key = issue_agent_cert(self.ca, self.directory / "certs", name, any_name=any_name)
        return read(key), read(cert)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def serve():
    """serve(key, cert, ca) -> a started TLS helper holding grant g1 of epoch 5."""
    servers = []

    def start(key: bytes, cert: bytes, ca: bytes) -> HelperServer:
        grants = Grants()
        grants.lend("g1", 4, 5)
        server = HelperServer("127.0.0.1:0", grants, lambda: 5, workers=4, tls=(key, cert, ca))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def request(tmp_path) -> pb.CompileRequest:
    (tmp_path / "a.c").write_bytes(SOURCE)
    return pb.CompileRequest(grant="g1", epoch=5, compiler="gcc", compiler_identity=compiler_identity("gcc"),
                             args=["-O2"], source="a.c", cwd=str(tmp_path),
                             files=[pb.SourceFile(path=str(tmp_path / "a.c"), content=SOURCE)])


def compile_over(channel: grpc.Channel, tmp_path) -> pb.CompileReply:
    with channel:
        return compile_pb2_grpc.HelperStub(channel).Compile(request(tmp_path), timeout=30)


def tls_channel(server: HelperServer, ca: bytes, client: tuple[bytes, bytes] | None, agent: str = "a1"):
    from cluster.names import agent_server_name

    key, cert = client if client else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(server.address("unused"), credentials,
                               options=[("grpc.ssl_target_name_override", agent_server_name(agent))])


def test_a_client_without_a_certificate_cannot_run_a_job_even_with_a_held_grant(pki, serve, tmp_path):
    helper = serve(*pki.agent("a1"), pki.ca_pem)
    with pytest.raises(grpc.RpcError) as plaintext:
        compile_over(grpc.insecure_channel(helper.address("unused")), tmp_path)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as no_certificate:
        compile_over(tls_channel(helper, pki.ca_pem, client=None), tmp_path)
    assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE
    # The same job with a certificate of the cluster's CA: the grant was good all along.
    reply = compile_over(tls_channel(helper, pki.ca_pem, client=pki.agent("initiator")), tmp_path)
    assert (reply.refused, reply.exit_code) == ("", 0) and reply.object


def test_a_client_certificate_of_another_ca_is_refused(pki, serve, tmp_path):
    helper = serve(*pki.agent("a1"), pki.ca_pem)
    stranger = Pki(tmp_path / "other")
    with pytest.raises(grpc.RpcError) as refused:
        compile_over(tls_channel(helper, pki.ca_pem, client=stranger.agent("a1")), tmp_path)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def tls_job(tmp_path, pki, helper: HelperServer, agent: str) -> dict:
    """A gcc job through the initiator's JobServer over TLS, granted a core of `agent` at `helper`."""
    return job_through_initiator(tmp_path, OneGrant(helper.address("unused"), agent=agent),
                                 root_certificates=pki.ca_pem, client=pki.agent("initiator"))


def test_the_initiator_refuses_a_helper_whose_certificate_names_another_agent(pki, serve, tmp_path):
    impostor = serve(*pki.agent("a2"), pki.ca_pem)   # a2's certificate where the grant says a1
    reply = tls_job(tmp_path, pki, impostor, agent="a1")
    assert "helper" not in reply
    assert reply["local"].startswith("helper a1 failed") and "a1" in reply["local"], reply
    genuine = serve(*pki.agent("a1"), pki.ca_pem)
    assert tls_job(tmp_path, pki, genuine, agent="a1") == {"helper": "a1", "exit_code": 0, "core": 0}


def test_a_pool_certificate_serves_for_any_agent_name(pki, serve, tmp_path):
    """The compose file's replicas share one pool certificate (deploy/README.md):
    as on the coordinators, it passes for any agent name."""
    pool = serve(*pki.agent("pool", any_name=True), pki.ca_pem)
    assert tls_job(tmp_path, pki, pool, agent="3f2a9c") == {"helper": "3f2a9c", "exit_code": 0, "core": 0}


def test_a_helper_of_a_tls_cluster_needs_the_agents_certificate(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ConfigError, match="--tls-cert"):
        AgentConfig(name="a1", grpc_ca=str(tmp_path / "ca.pem"), helper_listen="127.0.0.1:0")
    AgentConfig(name="a1", grpc_ca=str(tmp_path / "ca.pem"))   # no Helper service: nothing to serve


def test_baton_up_issues_again_an_agent_certificate_made_before_helpers_served_tls(tmp_path):
    """A `baton up` directory keeps its certificates, but an agent certificate of
    the clientAuth-only kind cannot serve compile jobs: it is issued again."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from cli import certs
    from cli.local import LocalCluster

    cluster = LocalCluster(tmp_path / "up", agents=0)
    ca = make_ca(cluster.ca_dir)
    certs._sign(ca, cluster.certs_dir, "agent-a1", "a1",   # the kind issue_agent_cert made before
                [x509.DNSName("a1"), x509.UniformResourceIdentifier("urn:baton:agent:a1")],
                [ExtendedKeyUsageOID.CLIENT_AUTH], 10)
    assert not certs.serves_compile_jobs(cluster.certs_dir / "agent-a1.pem")
    cert, _ = cluster.agent_cert("a1")
    assert certs.serves_compile_jobs(cert)
    issued = read(cert)
    assert read(cluster.agent_cert("a1")[0]) == issued   # a current one is kept


def old_agent_cert(pki, name: str) -> tuple[str, str]:
    """An agent certificate of the kind issue_agent_cert made before helpers served TLS:
    clientAuth only, no server name initiators check."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from cli import certs

    cert, key = certs._sign(pki.ca, pki.directory / "old", f"agent-{name}", name,
                            [x509.DNSName(name), x509.UniformResourceIdentifier(f"urn:baton:agent:{name}")],
                            [ExtendedKeyUsageOID.CLIENT_AUTH], 10)
    return str(cert), str(key)


def test_an_agent_with_an_old_certificate_offers_no_helper_service_and_says_why(pki, etcd_url, tmp_path, caplog):
    """Every initiator would refuse its TLS (docs/design.md section 8): the agent must not
    advertise a Helper service that silently sends every job back to compile locally."""
    from agent.core import Agent
    from lease.client import EtcdConfig

    cert, key = old_agent_cert(pki, "a1")
    config = AgentConfig(name="a1", grpc_ca=str(pki.ca.cert_path), tls_cert=cert, tls_key=key,
                         helper_listen="127.0.0.1:0", etcd=EtcdConfig.from_urls(etcd_url),
                         workdir=str(tmp_path / "work"))
    assert "serverAuth" in config.helper_cert_problem()
    agent = Agent(config, runner_factory=lambda on_result: object())   # runs no tasks here
    try:
        with caplog.at_level("WARNING", logger="agent.core"):
            agent.start(run_loop=False)
        assert agent.helper is None and agent.presence_value().helper is None
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "not serving compile jobs" in warnings[0] and "baton certs agent --name a1" in warnings[0]
    finally:
        agent.stop()


def test_an_agent_certificate_must_name_this_agent_to_serve_compile_jobs(pki, tmp_path):
    cert, key = issue_agent_cert(pki.ca, tmp_path / "certs", "a2")
    config = AgentConfig(name="a1", grpc_ca=str(pki.ca.cert_path), tls_cert=str(cert), tls_key=str(key),
                         helper_listen="127.0.0.1:0", workdir=str(tmp_path / "work"))
    assert "a1" in config.helper_cert_problem()
    pool, pool_key = issue_agent_cert(pki.ca, tmp_path / "certs", "pool", any_name=True)
    for cert, key in ((pool, pool_key), issue_agent_cert(pki.ca, tmp_path / "certs", "a1")):
        assert AgentConfig(name="a1", grpc_ca=str(pki.ca.cert_path), tls_cert=str(cert), tls_key=str(key),
                           helper_listen="127.0.0.1:0").helper_cert_problem() is None
