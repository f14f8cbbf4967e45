"""The agent daemon against a real etcd, real gRPC and the real coordinator runtime.

Coordinators here are the real `coordinator.runtime.Runtime` on a real gRPC
server, made leader with the real lease.Session/Election (the HA loop is not
involved: the test decides who leads). One scripted servicer (a coordinator
that misbehaves on purpose) checks the agent's epoch fencing.

(Over 400 lines: the agent's protocol against a scripted coordinator, over both
link kinds, shares one set of fixtures.)
"""
from __future__ import annotations

import os
import pwd
import queue
import signal
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from cluster.keepalive import SERVER_OPTIONS

from agent.config import AgentConfig
from bench.aio_link import AioLinks
from agent.channels import Channels
from agent import core as agent_core
from agent.core import Agent
from agent.leader import followable
from cluster.records import LeaderRecord
from agent.link import CoordinatorLink
from agent.daemon import add_arguments, config_from_args
from bench.pool import AgentPool
from bench.sync_service import add_to_server
from agent.runner import TaskRef
from coordinator.config import Timings
from cluster.keys import decode, encode
from cluster.protocol import agent_pb2 as pb
from cluster.protocol import agent_pb2_grpc
from coordinator.runtime.runtime import Runtime
from lease.client import EtcdConfig, connect
from lease.election import Election
from lease.errors import ConfigError
from lease.session import Session
from tests.harness.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
TTL = 2
MYSELF = pwd.getpwuid(os.geteuid()).pw_name  # tasks run as the test's own user


class Coordinator:
    """A real runtime + gRPC server that leads when told to."""

    def __init__(self, etcd_url: str, keys, name: str, token: str | None = None,
                 tls: tuple[Path, Path] | None = None):
        self.name = name
        self.keys = keys
        self.etcd = connect(etcd_url, timeout=2.0)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=SERVER_OPTIONS)
        if tls is None:
            self.host = "127.0.0.1"
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:  # the certificate names the host, not the IP address
            self.host = "localhost"
            cert, key = tls
            creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
            self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.runtime = Runtime(self.etcd, keys, name, Timings(ttl=TTL), agent_token=token)
        add_to_server(self.runtime, self.server)
        self.server.start()
        self.session = Session(self.etcd, ttl=TTL, healthy=lambda: True).start()
        self.election = Election(self.etcd, keys.leader, self.session)

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.port}"

    def lead(self) -> int:
        value = encode({"name": self.name, "role": "primary", "grpc": self.grpc, "web": ""})
        assert self.election.campaign(value), "someone else leads"
        self.runtime.start(self.election.epoch)
        return self.election.epoch

    def step_down(self) -> None:
        self.runtime.stop("handover")
        self.election.resign()

    def close(self) -> None:
        self.runtime.stop("test over")
        self.election.resign()
        self.session.close()
        self.server.stop(0)
        self.etcd.close()


@pytest.fixture
def coordinators(etcd_url, keys):
    made = []

    def make(name: str, token: str | None = None, tls=None) -> Coordinator:
        c = Coordinator(etcd_url, keys, name, token, tls)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def agents(etcd_url, keys, tmp_path):
    made = []

    def make(name: str = "a1", link_factory=None, **kw) -> Agent:
        # Tasks here run as the test's own user: they write flags into tmp_path (the task
        # user's sandbox is tested in tests/test_agent_sandbox.py and tests/e2e/test_sandbox.py).
        cfg = AgentConfig(name=name, cores=kw.pop("cores", 2), workdir=str(tmp_path / name),
                          etcd=EtcdConfig.from_urls(etcd_url), cluster=keys.cluster, lease_ttl=TTL,
                          task_user=MYSELF, **kw)
        a = Agent(cfg, link_factory=link_factory).start()
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()


@pytest.fixture(params=["threads", "event loop"])
def link_factory(request):
    """The agent's threaded links, or the bench pool's links on one event loop (bench.aio_link)."""
    if request.param == "threads":
        yield None
        return
    links = AioLinks()
    yield links.link
    links.close()


def presence(etcd, keys, name="a1"):
    value, meta = etcd.get(keys.agent(name))
    return (decode(value), meta) if value is not None else (None, None)


def submit(etcd, keys, build_id: str, *tasks: tuple[str, str]) -> None:
    etcd.put(keys.build(build_id), encode({"id": build_id, "name": build_id,
                                           "tasks": [{"id": t, "cmd": cmd} for t, cmd in tasks]}))


def task_record(etcd, keys, build_id: str, task_id: str) -> dict | None:
    return decode(etcd.get(keys.task(build_id, task_id))[0])


def finished(etcd, keys, build_id, task_id):
    rec = task_record(etcd, keys, build_id, task_id)
    return rec if rec and rec["state"] in ("done", "failed") else None


def gated(flag: Path, started: Path | None = None) -> str:
    """A task that says it started (and touches `started`), waits for the
    test's flag file, then ends."""
    touch = f"touch {started}; " if started else ""
    return f"{touch}echo ran; while [ ! -e {flag} ]; do sleep 0.05; done; echo released"


# -- presence, connection, a real build ---------------------------------------------

def test_registers_presence_connects_with_token_and_runs_a_build(etcd, keys, agents, coordinators):
    agent = agents("a1", agent_token="s3cret")
    info, meta = wait_until(lambda: presence(etcd, keys)[0] and presence(etcd, keys), 10)
    assert info["name"] == "a1" and info["cores"] == 2 and info["group"] == "default"
    assert info["coordinator"] is None and info["epoch"] is None and info["version"]
    assert meta.lease_id != 0 and 0 < etcd.lease_ttl(meta.lease_id) <= TTL, "presence rides the agent's own lease"

    epoch = coordinators("p1", token="s3cret").lead()
    wait_until(lambda: presence(etcd, keys)[0]["coordinator"] == "p1", 10, message="presence names p1")
    assert presence(etcd, keys)[0]["epoch"] == epoch

    submit(etcd, keys, "b1", ("hello", "echo hello from $BATON_TASK_ID"), ("fails", "exit 7"))
    hello = wait_until(lambda: finished(etcd, keys, "b1", "hello"), 20)
    assert hello["state"] == "done" and hello["agent"] == "a1"
    assert hello["result"]["output_tail"] == "hello from hello\n"
    fails = wait_until(lambda: finished(etcd, keys, "b1", "fails"), 20)
    assert fails["state"] == "failed" and fails["result"]["exit_code"] == 7
    assert (Path(agent.config.workdir) / "b1").is_dir()
    wait_until(lambda: len(agent.results) == 0, 10, message="results acknowledged and forgotten")
    assert not list((Path(agent.config.workdir) / ".results").glob("*.json"))

    agent.stop()
    assert presence(etcd, keys) == (None, None), "stopping revokes the presence lease at once"


def test_a_wrong_token_is_refused_and_the_agent_keeps_trying(etcd, keys, agents, coordinators, caplog):
    coordinators("p1", token="right").lead()
    agent = agents("a1", agent_token="wrong")
    wait_until(lambda: "refused this agent's cluster token" in caplog.text, 10)
    assert agent.connected_to is None
    assert wait_until(lambda: presence(etcd, keys)[0], 10)["coordinator"] is None
    assert caplog.text.count("refused this agent's cluster token") == 1, "one clear sentence, not a flood"


def test_tls_to_the_coordinator_with_the_cluster_ca(etcd, keys, agents, coordinators, tmp_path):
    from cli.certs import issue_cert, make_ca

    ca = make_ca(tmp_path / "ca")
    cert, key = issue_cert(ca, tmp_path / "ca", "p1", ["localhost"])
    coordinators("p1", token="tok", tls=(cert, key)).lead()
    plain = agents("plain", agent_token="tok")
    agent = agents("a1", agent_token="tok", grpc_ca=str(ca.cert_path))
    wait_until(lambda: agent.connected_to == "p1", 10, message="TLS stream to p1")
    submit(etcd, keys, "b1", ("t", "echo over tls"))
    rec = wait_until(lambda: finished(etcd, keys, "b1", "t"), 20)
    assert rec["result"]["output_tail"] == "over tls\n"
    wait_until(lambda: plain.link is not None and plain.link.streams_opened >= 3, 10)
    assert plain.connected_to is None, "an agent without the CA must not talk plaintext to a TLS coordinator"


def test_an_agent_started_before_etcd_registers_once_etcd_is_up(keys, tmp_path):
    from tests.harness.etcd import EtcdMember

    member = EtcdMember(name="late", data_dir=tmp_path / "late")
    cfg = AgentConfig(name="a1", cores=1, workdir=str(tmp_path / "a1"), cluster=keys.cluster, lease_ttl=TTL,
                      etcd=EtcdConfig.from_urls(member.client_url, timeout=0.5), task_user=MYSELF)
    agent = Agent(cfg).start()
    try:
        assert not agent.presence.registered
        member.start()
        member.wait_ready()
        client = connect(member.client_url)
        try:
            wait_until(lambda: client.get(keys.agent("a1"))[0], 20, message="presence once etcd is up")
        finally:
            client.close()
    finally:
        agent.stop()
        member.stop()


def test_lost_session_registers_again_with_a_new_lease(etcd, keys, agents):
    agents("a1")
    meta = wait_until(lambda: presence(etcd, keys)[1], 10)
    etcd.lease_revoke(meta.lease_id)  # as if etcd had expired it
    again = wait_until(lambda: (m := presence(etcd, keys)[1]) and m.lease_id != meta.lease_id and m, 15,
                          message="presence written again with a new lease")
    assert etcd.lease_ttl(again.lease_id) > 0


# -- leader changes ------------------------------------------------------------------

def test_follows_the_leader_key_to_a_new_address_and_keeps_running_tasks(etcd, keys, agents, coordinators,
                                                                         tmp_path, link_factory):
    agent = agents("a1", link_factory=link_factory)
    p1, p2 = coordinators("p1"), coordinators("p2")
    assert p1.grpc != p2.grpc
    p1.lead()
    flag = tmp_path / "release"
    submit(etcd, keys, "b1", ("long", gated(flag)))
    wait_until(lambda: agent.runner.running(), 20, message="task running on the agent")

    p1.step_down()
    wait_until(lambda: agent.leader is None and agent.link is None, 10, message="stream closed: nobody leads")
    wait_until(lambda: presence(etcd, keys)[0]["coordinator"] is None, 10, message="presence: no coordinator")
    epoch2 = p2.lead()
    wait_until(lambda: presence(etcd, keys)[0]["coordinator"] == "p2", 10, message="presence names p2")
    assert presence(etcd, keys)[0]["epoch"] == epoch2
    assert [r.task_id for r in agent.runner.running()] == ["long"], "the leader change did not touch the task"

    flag.touch()
    rec = wait_until(lambda: finished(etcd, keys, "b1", "long"), 20)
    assert rec["state"] == "done" and rec["attempt"] == 1 and rec["agent"] == "a1"
    assert rec["result"]["output_tail"] == "ran\nreleased\n"


def test_buffers_a_result_while_no_leader_exists_and_delivers_it_to_the_next(etcd, keys, agents, coordinators,
                                                                             tmp_path, link_factory):
    agent = agents("a1", link_factory=link_factory)
    p1 = coordinators("p1")
    p1.lead()
    flag = tmp_path / "release"
    submit(etcd, keys, "b1", ("t", gated(flag)))
    wait_until(lambda: agent.runner.running(), 20)
    p1.step_down()
    wait_until(lambda: agent.leader is None and agent.link is None, 10)

    flag.touch()
    wait_until(lambda: len(agent.results) == 1, 10, message="result buffered")
    saved = list((Path(agent.config.workdir) / ".results").glob("*.json"))
    assert len(saved) == 1, "buffered results are also on disk"
    assert task_record(etcd, keys, "b1", "t")["state"] == "running", "nobody recorded it yet"

    coordinators("p2").lead()
    rec = wait_until(lambda: finished(etcd, keys, "b1", "t"), 20, message="result recorded by p2")
    assert rec["state"] == "done" and rec["attempt"] == 1
    wait_until(lambda: len(agent.results) == 0 and not saved[0].exists(), 10, message="ack removed the file")


def test_a_planned_handover_moves_the_agent_over_the_stream_it_opened_ahead(etcd, keys, agents, coordinators,
                                                                           tmp_path, link_factory):
    """The old leader names its successor before its Goodbye; the agent dials
    it and holds a Standby stream, which carries its Hello (with the task
    still running and a result finished meanwhile) once the key names it."""
    agent = agents("a1", link_factory=link_factory)
    p1, b1 = coordinators("p1"), coordinators("b1")
    p1.lead()
    flag, quick = tmp_path / "release", tmp_path / "quick"
    submit(etcd, keys, "b1", ("long", gated(flag)), ("short", gated(quick)))
    wait_until(lambda: len(agent.runner.running()) == 2, 20, message="both tasks running on the agent")

    p1.runtime.stop("switchover to b1", successor=("b1", b1.grpc))
    standby = wait_until(lambda: agent._standby, 10, message="a stream opened ahead to the successor")
    assert standby.standing_by and standby.leader.grpc == b1.grpc
    quick.touch()  # finishes while nobody leads: buffered, then sent in the Hello to b1
    wait_until(lambda: len(agent.results) == 1, 10, message="result buffered")
    p1.election.resign()
    epoch = b1.lead()
    wait_until(lambda: agent.connected_to == "b1", 10, message="agent connected to b1")
    assert agent.link is standby and standby.streams_opened == 1 and standby.epoch == epoch
    rec = wait_until(lambda: finished(etcd, keys, "b1", "short"), 20, message="b1 recorded the buffered result")
    assert rec["attempt"] == 1 and rec["coordinator"] == "b1"
    flag.touch()
    rec = wait_until(lambda: finished(etcd, keys, "b1", "long"), 20)
    assert rec["state"] == "done" and rec["attempt"] == 1, "the running task was kept, not run again"


def test_a_standby_stream_is_dropped_when_someone_else_leads(etcd, keys, agents, coordinators, link_factory):
    agent = agents("a1", link_factory=link_factory)
    p1, b1, b2 = coordinators("p1"), coordinators("b1"), coordinators("b2")
    p1.lead()
    wait_until(lambda: agent.connected_to == "p1", 10)
    p1.runtime.stop("switchover to b1", successor=("b1", b1.grpc))
    standby = wait_until(lambda: agent._standby, 10, message="a stream opened ahead to the successor")
    p1.election.resign()
    b2.lead()
    wait_until(lambda: agent.connected_to == "b2", 10, message="agent follows the key, not the announcement")
    wait_until(lambda: standby.closed and agent._standby is None, 10, message="standby stream closed")


# -- epoch fencing against a coordinator that misbehaves on purpose ------------------------

class ScriptedCoordinator(agent_pb2_grpc.AgentServiceServicer):
    """A coordinator that misbehaves on purpose: each stream sends the next
    script (a list of CoordinatorMessages), then whatever is put in `inject`,
    until the agent closes the stream. Records every agent message."""

    def __init__(self):
        self.scripts: queue.Queue = queue.Queue()
        self.inject: queue.Queue = queue.Queue()
        self.received: list[pb.AgentMessage] = []
        self.streams_ended = 0
        self._lock = threading.Lock()

    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        with self._lock:
            self.received.append(first)
        ended = threading.Event()

        def read():
            try:
                for m in request_iterator:
                    with self._lock:
                        self.received.append(m)
            except grpc.RpcError:
                pass
            finally:
                with self._lock:
                    self.streams_ended += 1
                ended.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            script = self.scripts.get(timeout=0.5)
        except queue.Empty:
            script = []
        yield from script
        while not ended.is_set() and context.is_active():
            try:
                yield self.inject.get(timeout=0.05)
            except queue.Empty:
                pass


@pytest.fixture
def scripted(etcd, keys):
    """A ScriptedCoordinator on a real gRPC server, named by the leader key: (servicer, epoch)."""
    servicer = ScriptedCoordinator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    session = Session(etcd, ttl=TTL, healthy=lambda: True).start()
    election = Election(etcd, keys.leader, session)
    assert election.campaign(encode({"name": "odd", "role": "primary", "grpc": f"127.0.0.1:{port}"}))
    yield servicer, election.epoch
    session.close()
    server.stop(0)


def coord(epoch: int, **body) -> pb.CoordinatorMessage:
    return pb.CoordinatorMessage(epoch=epoch, **body)


def assign(epoch: int, task: str, cmd: str) -> pb.CoordinatorMessage:
    return coord(epoch, assign=pb.Assignment(task=pb.TaskRef(build_id="b1", task_id=task, attempt=1), cmd=cmd))


def sent(servicer: ScriptedCoordinator, kind: str) -> list:
    with servicer._lock:
        return [getattr(m, kind) for m in servicer.received if m.WhichOneof("body") == kind]


def test_messages_for_another_epoch_are_ignored_and_close_the_stream(agents, tmp_path, scripted, link_factory):
    servicer, epoch = scripted
    bad, good = tmp_path / "bad", tmp_path / "good"
    welcome = coord(epoch, welcome=pb.Welcome(coordinator="odd"))
    servicer.scripts.put([welcome, assign(epoch + 1000, "stale", f"touch {bad}")])
    servicer.scripts.put([welcome, assign(epoch, "fresh", f"touch {good}")])
    agent = agents("a1", link_factory=link_factory)
    wait_until(good.exists, 20, message="the assignment with the right epoch ran")
    wait_until(lambda: servicer.streams_ended >= 1, 10, message="the agent closed the stream with another epoch")
    assert not bad.exists(), "an assignment for another epoch must never run"
    wait_until(lambda: sent(servicer, "result"), 10)
    assert {m.epoch for m in servicer.received} == {epoch}, "every agent message carries the epoch it sees"
    assert [r.task.task_id for r in sent(servicer, "result")] == ["fresh"]
    hellos = sent(servicer, "hello")
    assert len(hellos) >= 2 and hellos[0].name == "a1" and hellos[0].cores == 2
    assert agent.results.get(TaskRef("b1", "fresh", 1)) is not None, "no ack came: the result stays buffered"


@pytest.mark.parametrize("old_leader_speaks", [True, False])
def test_a_welcomed_stream_outlasts_a_brief_leaderless_gap_but_takes_no_orders(
        agents, etcd, keys, tmp_path, scripted, link_factory, monkeypatch, old_leader_speaks):
    """A planned handover deletes the leader key ~0.1 s before the next leader's put: the
    agent keeps its stream meanwhile (no close, no presence write saying "not linked"),
    but whatever the old leader sends now ends it (rule 4), and without a new leader the
    stream is closed after LEADERLESS_HOLD."""
    monkeypatch.setattr(agent_core, "LEADERLESS_HOLD", 30.0 if old_leader_speaks else 0.2)
    servicer, epoch = scripted
    servicer.scripts.put([coord(epoch, welcome=pb.Welcome(coordinator="odd"))])
    agent = agents("a1", link_factory=link_factory)
    wait_until(lambda: agent.connected_to == "odd", 10, message="welcomed")
    wait_until(lambda: (presence(etcd, keys)[0] or {}).get("epoch") == epoch, 10, message="presence names it")
    link = agent.link
    etcd.delete(keys.leader)
    wait_until(lambda: agent.leader is None, 10, message="the agent saw the key go")
    if old_leader_speaks:
        agent.tick_link()
        assert agent.link is link and link.welcomed, "kept through the gap"
        assert agent.presence_value().coordinator == "odd"
        bad = tmp_path / "bad"
        servicer.inject.put(assign(epoch, "late", f"touch {bad}"))
    wait_until(lambda: agent.link is None, 10, message="the stream closed")
    wait_until(lambda: servicer.streams_ended >= 1, 10, message="the old leader's stream ended")
    wait_until(lambda: (presence(etcd, keys)[0] or {}).get("coordinator") is None, 10,
               message="presence says not linked")
    if old_leader_speaks:
        assert not bad.exists(), "an order from a leader the agent no longer sees must never run"
        assert not agent.runner.running()


class LinkOwner:
    """The little a CoordinatorLink needs from its agent, with a leader view the test moves."""

    def __init__(self, epoch: int):
        self.lock = threading.RLock()
        self.seen = epoch
        self.rereads = 0
        self.messages: list[str] = []

    def hello(self) -> pb.Hello:
        return pb.Hello(name="a1", cores=1)

    def seen_epoch(self) -> int | None:
        return self.seen

    def on_message(self, link, message) -> None:
        self.messages.append(message.WhichOneof("body"))

    def on_link_state(self, link) -> None:
        pass

    def recheck_leader(self) -> None:
        self.rereads += 1


@pytest.mark.parametrize("last", ["goodbye", "assignment after the key moved on"])
def test_the_old_leaders_last_words_end_the_stream_without_rereading_the_key(scripted, etcd, keys, last,
                                                                            link_factory):
    """A planned handover resigns before its Goodbyes: by the time they arrive the agent
    may already see the new leader (or no leader). 200 agents re-reading the leader key
    then would load etcd at the moment the handover needs it: the stream just ends."""
    servicer, epoch = scripted
    leader = LeaderRecord.parse(etcd.get(keys.leader)[0], epoch)
    owner = LinkOwner(epoch)
    servicer.scripts.put([coord(epoch, welcome=pb.Welcome(coordinator="odd"))])
    channels = Channels()
    link = (link_factory(leader, owner, max_backoff=30) if link_factory
            else CoordinatorLink(leader, owner, channels, max_backoff=30)).start()
    try:
        wait_until(lambda: link.welcomed, 10, message="welcomed")
        if last == "goodbye":
            servicer.inject.put(coord(epoch, goodbye=pb.Goodbye(reason="switchover to b1")))
        else:
            owner.seen = None  # the leader key was deleted: a handover is under way
            servicer.inject.put(assign(epoch, "late", "true"))
        wait_until(lambda: servicer.streams_ended >= 1, 10, message="the stream ended")
        assert owner.rereads == 0 and owner.messages == ["welcome"]
        assert not link.welcomed and link.streams_opened == 1, "no new stream before max_backoff"
    finally:
        link.close()
        link.join()
        channels.close()


def test_welcome_cancels_tasks_and_an_attempt_never_runs_twice(agents, tmp_path, scripted):
    servicer, epoch = scripted
    counter, pidfile = tmp_path / "runs", tmp_path / "pid"
    welcome = coord(epoch, welcome=pb.Welcome(coordinator="odd"))
    long_task = assign(epoch, "long", f"echo $$ > {pidfile}; sleep 300")
    once = assign(epoch, "once", f"echo run >> {counter}")
    goodbye = coord(epoch, goodbye=pb.Goodbye(reason="handover"))
    # Stream 1: two tasks, then Goodbye. Stream 2: the Welcome cancels the long
    # one; the finished one is assigned again, then acknowledged.
    servicer.scripts.put([welcome, long_task, once])
    agent = agents("a1")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() and sent(servicer, "result"), 20)
    hello_before = len(sent(servicer, "hello"))
    cancel = pb.Welcome(coordinator="odd", cancel=[pb.TaskRef(build_id="b1", task_id="long", attempt=1)])
    servicer.scripts.put([coord(epoch, welcome=cancel), once,
                          coord(epoch, ack=pb.ResultAck(task=pb.TaskRef(build_id="b1", task_id="once", attempt=1),
                                                        recorded=True))])
    servicer.inject.put(goodbye)  # ends stream 1 from the coordinator's side
    wait_until(lambda: len(sent(servicer, "hello")) > hello_before, 20, message="a second stream")
    second_hello = sent(servicer, "hello")[hello_before]
    assert [r.task_id for r in second_hello.running] == ["long"]
    assert [r.task.task_id for r in second_hello.results] == ["once"], "the unacked result is in the Hello"
    wait_until(lambda: agent.runner.running() == [], 10, message="the cancelled task was killed")
    wait_until(lambda: len(agent.results) == 0, 10, message="the acked result is forgotten")
    assert counter.read_text() == "run\n", "a re-assigned attempt must not run again"
    assert "long" not in [r.task.task_id for r in sent(servicer, "result")], "a cancelled task reports nothing"


# -- a real agent process, restarted ---------------------------------------------------------

def start_agent_process(etcd_url, keys, workdir: Path, name="a1") -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "--name", name, "--cores", "2", "--workdir", str(workdir),
         "--etcd", etcd_url, "--cluster", keys.cluster, "--lease-ttl", str(TTL), "--log-level", "INFO",
         "--task-user", MYSELF],
        cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=open(workdir.parent / f"{name}.log", "ab"),
        start_new_session=True)


@pytest.fixture
def processes():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def test_persisted_results_survive_an_agent_process_restart(etcd, etcd_url, keys, coordinators, processes,
                                                            tmp_path):
    workdir = tmp_path / "a1"
    workdir.mkdir()
    processes.append(start_agent_process(etcd_url, keys, workdir))
    p1 = coordinators("p1")
    p1.lead()
    wait_until(lambda: (presence(etcd, keys)[0] or {}).get("coordinator") == "p1", 20,
               message="agent process connected to p1")
    flag, started = tmp_path / "release", tmp_path / "started"
    submit(etcd, keys, "b1", ("t", gated(flag, started)))
    wait_until(started.exists, 20, message="the task started in the agent process")
    p1.step_down()
    wait_until(lambda: presence(etcd, keys)[0]["coordinator"] is None, 10)
    flag.touch()
    results_dir = workdir / ".results"
    wait_until(lambda: list(results_dir.glob("*.json")), 10, message="result persisted while no leader")

    first = processes[0]
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0, (workdir.parent / "a1.log").read_text()[-3000:]
    assert presence(etcd, keys) == (None, None), "a stopped agent withdraws its presence"
    assert len(list(results_dir.glob("*.json"))) == 1, "the unacknowledged result outlives the process"

    processes.append(start_agent_process(etcd_url, keys, workdir))
    wait_until(lambda: presence(etcd, keys)[0], 20, message="restarted agent registered")
    coordinators("p2").lead()
    rec = wait_until(lambda: finished(etcd, keys, "b1", "t"), 20, message="p2 recorded the old result")
    assert rec["state"] == "done" and rec["attempt"] == 1 and rec["agent"] == "a1"
    assert rec["result"]["output_tail"] == "ran\nreleased\n"
    wait_until(lambda: not list(results_dir.glob("*.json")), 10, message="acknowledged result file removed")


# -- the bench pool ----------------------------------------------------------------------------

def test_pool_agents_each_register_connect_and_complete_work(etcd, etcd_url, keys, coordinators):
    pool = AgentPool(etcd_url, keys.cluster, count=3, cores=2, lease_ttl=TTL).start()
    try:
        wait_until(lambda: len(etcd.get_prefix(keys.agents)) == 3, 10, message="three presence keys")
        epoch = coordinators("p1").lead()
        wait_until(lambda: pool.connected() == 3, 10, message="three streams")
        submit(etcd, keys, "b1", *[(f"t{i}", "this never runs a process") for i in range(12)])
        for i in range(12):
            rec = wait_until(lambda i=i: finished(etcd, keys, "b1", f"t{i}"), 20)
            assert rec["state"] == "done"
        wait_until(lambda: {decode(v)["epoch"] for v, _ in etcd.get_prefix(keys.agents)} == {epoch}, 10,
                   message="every pool agent's presence names the epoch")
        assert pool.completed() == 12
        assert len(pool.links._channels) == 1, "one gRPC channel to p1 for the pool, a stream per agent"
    finally:
        pool.stop()
    assert etcd.get_prefix(keys.agents) == []


# -- configuration ---------------------------------------------------------------------------

def test_config_from_args_reads_the_token_file_and_validates(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    token = tmp_path / "token"
    token.write_text("tok\n")
    cfg = config_from_args(parser.parse_args(
        ["--name", "a1", "--cores", "3", "--workdir", str(tmp_path / "w"), "--agent-token-file", str(token),
         "--etcd", "http://127.0.0.1:1,http://127.0.0.1:2", "--cluster", "c1"]))
    assert (cfg.name, cfg.cores, cfg.agent_token, cfg.cluster) == ("a1", 3, "tok", "c1")
    assert cfg.etcd.endpoints == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    monkeypatch.setenv("BATON_AGENT_TOKEN", "from-env")
    assert config_from_args(parser.parse_args(["--name", "a1"])).agent_token == "from-env"
    with pytest.raises(ConfigError, match="cores"):
        config_from_args(parser.parse_args(["--name", "a1", "--cores", "0"]))
    with pytest.raises(ConfigError, match="ttl"):
        config_from_args(parser.parse_args(["--name", "a1", "--lease-ttl", "1"]))
    with pytest.raises(ConfigError, match="does not exist"):
        config_from_args(parser.parse_args(["--name", "a1", "--grpc-ca", str(tmp_path / "nope.pem")]))


def test_the_agent_name_defaults_to_the_host_name(monkeypatch):
    """`docker compose up --scale agent=N`: one service, N containers, each its own host name."""
    import argparse
    import socket

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.delenv("BATON_AGENT_NAME", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "3f2a9c1b7d4e.example.internal")
    assert config_from_args(parser.parse_args([])).name == "3f2a9c1b7d4e"
    monkeypatch.setenv("BATON_AGENT_NAME", "from-env")
    assert config_from_args(parser.parse_args([])).name == "from-env"
    assert config_from_args(parser.parse_args(["--name", "a7"])).name == "a7"


def test_pool_pretend_tasks_run_for_their_time_are_listed_while_running_and_cancel_quietly():
    from bench.pool import PretendRunner, TaskClock

    results = []
    runner = PretendRunner(results.append, seconds=1.0, clock=TaskClock())
    a, b = TaskRef("b1", "a", 1), TaskRef("b1", "b", 1)
    assert runner.start(a, "true") and runner.start(b, "true")
    assert not runner.start(a, "true"), "an attempt runs once"
    assert sorted(runner.running(), key=str) == sorted([a, b], key=str) and results == []
    assert runner.cancel(b) and not runner.cancel(b)
    wait_until(lambda: results, 10, message="a ended after its time")
    assert [r.task for r in results] == [a] and results[0].exit_code == 0
    assert runner.running() == [] and runner.completed == 1
    instant = []
    PretendRunner(instant.append).start(a, "true")
    assert [r.task for r in instant] == [a], "0 s: ends at once"


def test_a_leader_without_a_grpc_address_is_no_leader_an_agent_can_follow(caplog):
    assert followable(b'{"name": "p1", "grpc": "h:7000"}', 5, 3) == LeaderRecord(
        name="p1", role="", epoch=5, grpc="h:7000", lease_id=3)
    assert followable(b'{"name": "p1", "web": "h:8000"}', 5) is None
    assert "no gRPC address" in caplog.text
    assert followable(None, 5) is None
