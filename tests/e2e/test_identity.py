"""Agent identity with real processes (docs/design.md section 9): a Hello under a live
agent's name is refused, never a takeover; with TLS a Hello is accepted only for the
name in the client certificate; bad names are refused on the gRPC path."""
from __future__ import annotations

import grpc
import pytest

from cluster.keys import decode
from cluster.protocol import agent_pb2 as pb
from cluster.protocol import agent_pb2_grpc
from tests.harness.wait import wait_until

pytestmark = pytest.mark.slow

BAD_NAMES = ["../../x", "a/b/c", "\u00e9", "x" * 10_000, "y" * (1_600 * 1024)]


def hello(cluster, name, *, token=None, cert=None, timeout=10.0):
    """Say Hello to the leader as `name` the way an agent would; returns (status code,
    details, messages received) once the coordinator ends the stream or `timeout` passes."""
    leader = cluster.leader()
    address = f"localhost:{cluster.grpc_ports[leader.name]}"
    if cluster.tls:
        with open(cluster.ca, "rb") as f:
            ca = f.read()
        key, chain = (open(cert[1], "rb").read(), open(cert[0], "rb").read()) if cert else (None, None)
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, chain))
    else:
        channel = grpc.insecure_channel(address)
    metadata = [("authorization", f"Bearer {token or cluster.agent_token}")]
    first = pb.AgentMessage(epoch=leader.epoch, hello=pb.Hello(name=name, host="impostor", cores=8))
    call = agent_pb2_grpc.AgentServiceStub(channel).Connect(iter([first]), metadata=metadata, timeout=timeout)
    received = []
    try:
        for message in call:
            received.append(message.WhichOneof("body"))
        return grpc.StatusCode.OK, "", received
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", received
    finally:
        channel.close()


def listed(cluster):
    return sorted((decode(cluster.etcd().get(cluster.keys.runtime)[0]) or {"agents": {}})["agents"])


def held_task(cluster, tmp_path):
    """Submit one task that runs until the test releases it; returns (build id, release file)."""
    release = tmp_path / "release"
    cmd = f"while [ ! -f {release} ]; do sleep 0.05; done; echo from-the-real-agent"
    build_id = cluster.api("p1").request("POST", "/api/v1/builds", {"name": "held", "tasks": [
        {"id": "t1", "cmd": cmd}]})["id"]
    wait_until(lambda: cluster.api("p1").build(build_id)["tasks"][0]["state"] == "running", 30,
               message="t1 running on a1")
    return build_id, release


def finished_record(cluster, build_id):
    def done():
        record = decode(cluster.etcd().get(cluster.keys.task(build_id, "t1"))[0])
        return record if record and record["state"] in ("done", "failed") else None
    return wait_until(done, 30, message="t1's result")


def test_an_impostor_with_the_token_cannot_take_over_a_live_agent(make_cluster, tmp_path):
    cluster = make_cluster(agents=1, backups=0, cores=1)
    build_id, release = held_task(cluster, tmp_path)
    code, details, received = hello(cluster, "a1")
    assert (code, details) == (grpc.StatusCode.ALREADY_EXISTS, "agent a1 is already connected")
    assert received == [], "an impostor gets neither a Welcome nor work"
    release.write_text("")
    record = finished_record(cluster, build_id)
    assert record["state"] == "done" and record["attempt"] == 1 and record["agent"] == "a1"
    assert "from-the-real-agent" in record["result"]["output_tail"]
    # Killed and started again, the real agent connects at once (its old stream died with it).
    cluster.agents["a1"].kill()
    cluster.add_agent("a1")
    wait_until(lambda: cluster.agent_records().get("a1") and cluster.agent_records()["a1"].coordinator
               and "a1" in listed(cluster)
               and decode(cluster.etcd().get(cluster.keys.runtime)[0])["agents"]["a1"]["connected"], 30,
               message="a1 connected again")
    second = cluster.api("p1").request("POST", "/api/v1/builds", {"name": "again", "tasks": [
        {"id": "t1", "cmd": "echo again"}]})["id"]
    assert finished_record(cluster, second)["state"] == "done"
    # Names that break the rules are refused on the gRPC path, and nothing is listed.
    for name in BAD_NAMES:
        code, details, _ = hello(cluster, name)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be 1-63 letters" in details, name[:20]
    assert listed(cluster) == ["a1"]


def test_with_tls_a_hello_is_accepted_only_for_the_name_in_the_client_certificate(make_cluster, tmp_path):
    cluster = make_cluster(agents=2, backups=0, cores=1, tls=True)
    build_id, release = held_task(cluster, tmp_path)
    running_on = cluster.api("p1").build(build_id)["tasks"][0]["agent"]
    other = "a2" if running_on == "a1" else "a1"
    # Another agent's certificate (valid, same CA, with the token) cannot speak for this one.
    code, details, received = hello(cluster, running_on, cert=cluster.agent_cert(other))
    assert code == grpc.StatusCode.PERMISSION_DENIED and received == []
    assert details == f"this client certificate does not name agent {running_on} (it names {other})"
    # A certificate naming a1 cannot say Hello as a name nobody has either.
    code, _, _ = hello(cluster, "a3", cert=cluster.agent_cert("a1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The coordinators' host certificate is no agent's, and no certificate gets no stream.
    assert hello(cluster, "localhost", cert=(str(cluster.certs_dir / "localhost.pem"),
                                             str(cluster.certs_dir / "localhost-key.pem")))[0] \
        == grpc.StatusCode.PERMISSION_DENIED
    assert hello(cluster, running_on)[0] == grpc.StatusCode.UNAVAILABLE
    # Even the agent's own certificate cannot open a second stream while it is connected.
    code, details, _ = hello(cluster, running_on, cert=cluster.agent_cert(running_on))
    assert (code, details) == (grpc.StatusCode.ALREADY_EXISTS, f"agent {running_on} is already connected")
    release.write_text("")
    record = finished_record(cluster, build_id)
    assert record["state"] == "done" and record["attempt"] == 1 and record["agent"] == running_on
    assert "from-the-real-agent" in record["result"]["output_tail"]
    # The runtime key is rewritten every 0.5 s: poll it rather than read one moment of it.
    wait_until(lambda: listed(cluster) == ["a1", "a2"], 10, message="both real agents listed")
