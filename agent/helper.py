"""The agent's Helper service: compile jobs of `baton run` builds on lent cores.

The leader lends cores of this agent to a build over the agent's stream
(agent.proto Lend/Unlend, each under the leader's epoch); the initiator then
sends compile jobs naming the grant straight here (compile.proto Helper), so
the coordinator is never in the data path. `Grants` is what the agent holds;
a job is refused (CompileReply.refused, and the initiator compiles it
itself) when:

- its grant is not one the agent holds (a job of a grant not heard of yet
  waits a little for its Lend: `Grants.slot`), or it carries another epoch
  than the grant, or one older than the newest the agent knows (rule 4: a
  deposed leader's grants end with its epoch; jobs in flight finish);
- the grant's slots are all busy (at most `slots` jobs at once per grant);
- this agent has no compiler of that name whose files hash to the job's
  compiler identity, nor a shipped one of that identity (never a different
  compiler under the same name): the reply asks for the toolchain
  (`toolchain_wanted`), which the initiator ships once (Toolchain, kept by
  agent.toolchain_store.ToolchainStore under `<workdir>/.toolchains`, or a
  private directory of the system temp directory when the compile user
  cannot reach the work directory);
- agent.compile_job refuses it (flags, paths, sizes).

Who may send a job: with TLS on (the agent has its certificate, key and the
cluster's CA), the service serves TLS with the agent's certificate, whose
server name the initiator checks (cluster.names.agent_server_name), and
requires a client certificate signed by the cluster's CA before any call,
so a grant id alone runs nothing. Plaintext only when the whole cluster runs
without TLS, where the random grant id, known to the leader, this agent and
the initiator, is all there is (docs/design.md sections 8 and 9).

Compiles run with a clean environment, as "nobody" when the agent runs as
root (else as the agent's own user), in a job root (reused from job to
job: agent/job_root.py) under `<workdir>/.compile/jobs` (or a private directory of the system temp
directory when that user cannot reach the work directory). A job names most
of its files by hash (InputFile): their contents are kept in an
agent.input_store.InputStore next to the job roots (the same file system,
so a job root is laid out by hard links), and a job whose contents the
store lacks is answered `missing` (the initiator sends it again with them).

(Over 400 lines: Grants stays next to the service whose jobs it admits.)
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import pwd
import re
import shutil
import tempfile
import threading
import time
from concurrent import futures
from typing import Callable, Iterator

import grpc

from agent import sandbox
from agent.compile_job import CLEAN_ENV, CompileJob, InputsMissing, JobRefused, compiler_identity, run_compile
from agent.input_store import EMPTY, ContentMismatch, InputStore
from agent.job_root import RootPool
from agent.toolchain_store import DEFAULT_STORE_BYTES, ToolchainRefused, ToolchainStore
from cluster.files import stat_stamp
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE = 80 * 1024 * 1024   # a job's files are bounded at 64 MiB (compile_job.MAX_INPUT_BYTES), plus framing
# A job's wait for its grant's Lend (or a busy slot). The leader sends the Lend and the
# initiator's grants in one loop turn, so this covers the skew of two stream deliveries
# (none was seen in 108 e2e jobs here: the Lend came first), after a failover too (a
# leader lends to an agent only after its Hello). Not the lease ttl, which is how long a
# dead leader goes unseen, not that skew; and a local compile costs about what 1 s does.
GRANT_WAIT = 1.0
# Jobs that wait at once (more are refused at once): each holds a server thread. The
# agent gives the server cores + 4 threads (agent/core.py) and running jobs hold at most
# `cores` (one per lent slot), so a job of a free slot always finds a thread.
MAX_WAITING = 4
_ENDED_KEPT = 4096               # grant ids remembered as ended (Unlend, or their stream ended)
_COMPILER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
TASK_USER_WHEN_ROOT = "nobody"


class Refused(Exception):
    """The helper does not compile this job; the sentence goes back to the initiator."""


class NoSuchCompiler(Refused):
    """No compiler of the job's name and identity here: the initiator may ship one."""


class _Grant:
    __slots__ = ("slots", "epoch", "busy")

    def __init__(self, slots: int, epoch: int):
        self.slots, self.epoch, self.busy = slots, epoch, 0


class Grants:
    """The grants this agent holds. Thread-safe: Lend/Unlend come on the
    link's thread, jobs on the gRPC server's.

    Grants end with the stream that brought them: `new_stream()` (the agent's
    Hello) drops them all and counts the jobs still running under them
    ("carried": no coordinator counts them any more); each time one of those
    ends, `on_carried(jobs still carried)` is called, for the agent to tell its
    leader (agent.proto Compiling). `wait`, `max_waiting`: see slot()."""

    def __init__(self, on_carried: Callable[[int], None] | None = None, wait: float = GRANT_WAIT,
                 max_waiting: int = MAX_WAITING) -> None:
        if wait < 0 or max_waiting < 0:
            raise ValueError(f"wait ({wait}) and max_waiting ({max_waiting}) cannot be negative")
        self._cond = threading.Condition()
        self._grants: dict[str, _Grant] = {}
        self.newest_epoch = 0
        self.on_carried = on_carried
        self.wait = wait
        self.max_waiting = max_waiting
        self._waiting = 0     # jobs waiting in slot() now
        # Ended grant ids, and why: their jobs wait for no Lend (a grant id is never lent again).
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._stream = 0      # how many streams opened (new_stream calls); a job remembers its own
        self._in_flight = 0
        self._carried = 0     # jobs in flight that started before the current stream

    def new_stream(self) -> int:
        """A stream to a coordinator opens (its Hello): the grants end; returns the jobs still running.
        Jobs waiting for a Lend are refused: a leader lends on a stream only after its Hello, so
        theirs was lent on an earlier stream, and ended with it."""
        with self._cond:
            self._stream += 1
            for name in self._grants:
                self._end(name, "the agent's stream that brought it ended")
            self._grants.clear()
            self._carried = self._in_flight
            self._cond.notify_all()
            return self._carried

    def lend(self, grant: str, slots: int, epoch: int) -> None:
        with self._cond:
            held = self._grants.get(grant)
            if held is None or held.epoch != epoch:
                self._grants[grant] = _Grant(slots, epoch)
            else:
                held.slots = slots
            self._ended.pop(grant, None)
            self._follow(epoch)
            self._cond.notify_all()

    def unlend(self, grant: str) -> None:
        with self._cond:
            self._grants.pop(grant, None)
            self._end(grant, "the leader ended it (Unlend)")
            self._cond.notify_all()

    def _end(self, grant: str, why: str) -> None:
        self._ended[grant] = why
        self._ended.move_to_end(grant)
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)

    def follow(self, epoch: int | None) -> None:
        """A leader of this epoch leads: grants of older epochs take no new jobs."""
        with self._cond:
            self._follow(epoch or 0)

    def _follow(self, epoch: int) -> None:
        if epoch > self.newest_epoch:
            self.newest_epoch = epoch
            for name in [n for n, g in self._grants.items() if g.epoch < epoch]:
                del self._grants[name]
            self._cond.notify_all()   # waiters of older epochs are refused now

    def slots(self) -> dict[str, int]:
        with self._cond:
            return {name: g.slots for name, g in self._grants.items()}

    def waiting(self) -> int:
        """How many jobs wait for a Lend or a slot now."""
        with self._cond:
            return self._waiting

    def _refusal(self, grant: str, epoch: int, stream: int) -> tuple[str | None, bool]:
        """(why the job may not run now or None, whether that is final: waiting cannot change it)."""
        if epoch < self.newest_epoch:
            return f"the grant's epoch {epoch} is older than the leader's {self.newest_epoch}", True
        held = self._grants.get(grant)
        if held is None:
            ended = self._ended.get(grant)
            if ended is not None:
                return f"this helper holds no such grant: {ended}", True
            if stream != self._stream:
                return "this helper holds no such grant: its stream to the leader ended meanwhile", True
            return "this helper holds no such grant", False   # its Lend may be on the way
        if held.epoch != epoch:
            return f"the grant is of epoch {held.epoch}, not {epoch}", True
        if held.busy >= held.slots:
            return f"all {held.slots} slots of the grant are busy", False
        return None, True

    @contextlib.contextmanager
    def slot(self, grant: str, epoch: int, wait: float | None = None) -> Iterator[None]:
        """Hold one of the grant's slots for a job; Refused (with why) when it may not run.
        A grant not heard of yet (its epoch not older than the newest known) or a busy slot:
        wait up to `wait` (default self.wait) for the Lend or the slot. A Lend, an Unlend, a
        newer epoch or a new stream wakes the waiters; past `max_waiting` waiters a job is
        refused at once, so waiters never take all of the server's threads."""
        with self._cond:
            stream = self._stream
            why, final = self._refusal(grant, epoch, stream)
            if why is not None and not final:
                if self._waiting >= self.max_waiting:
                    raise Refused(f"{why} (and {self._waiting} jobs wait already)")
                self._waiting += 1
                started = time.monotonic()
                try:
                    self._cond.wait_for(lambda: self._refusal(grant, epoch, stream)[1],
                                        self.wait if wait is None else wait)
                finally:
                    self._waiting -= 1
                why, _ = self._refusal(grant, epoch, stream)
                log.info("a job of grant %s waited %.3f s: %s", grant[:8], time.monotonic() - started,
                         why or "it may run")
            if why is not None:
                raise Refused(why)
            held = self._grants[grant]
            held.busy += 1
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                held.busy -= 1
                self._in_flight -= 1
                carried = None
                if stream != self._stream:
                    self._carried = carried = max(0, self._carried - 1)
                self._cond.notify_all()
            if carried is not None and self.on_carried is not None:
                self.on_carried(carried)


class Compilers:
    """The compilers this agent has, by name, with their identities (cached while the files stay)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, tuple, str]] = {}   # name -> (path, stat stamp, identity)

    def matching(self, name: str, identity: str) -> str:
        """The path of this agent's `name` if its identity is `identity`; Refused otherwise.
        A name found before is checked by one stat of its path (through its symlinks: a link
        turned to another file, or a file replaced, changes the stamp), not looked up on PATH
        and resolved again for each job."""
        if not _COMPILER_NAME.match(name):
            raise Refused(f"{name[:80]!r} is not a compiler name")
        with self._lock:
            known = self._known.get(name)
        if known is not None:
            try:
                st = os.stat(known[0])
            except OSError:
                known = None
            else:
                if stat_stamp(st) != known[1]:
                    known = None
        if known is None:
            path = shutil.which(name, path=CLEAN_ENV["PATH"])
            if path is None:
                raise NoSuchCompiler(f"this helper has no {name}")
            st = os.stat(path)
            known = (path, stat_stamp(st),
                     compiler_identity(path))
            with self._lock:
                self._known[name] = known
        if known[2] != identity:
            raise NoSuchCompiler(f"this helper's {name} is a different compiler")
        return known[0]


def compile_dirs(workdir: str | None, user: str | None) -> tuple[str, bool]:
    """(the directory for the store and the job roots, whether it is a private temporary one):
    `<workdir>/.compile` when the compile user can reach it, else a new one in the system temp."""
    if workdir is not None:
        os.makedirs(workdir, mode=0o711, exist_ok=True)
        reachable = True
        if user is not None:
            entry = pwd.getpwnam(user)
            reachable = sandbox.first_closed_parent(
                workdir, sandbox.TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)) is None
        if reachable:
            base = os.path.join(workdir, ".compile")
            os.makedirs(base, mode=0o711, exist_ok=True)
            return base, False
    return tempfile.mkdtemp(prefix="baton-helper-"), True


class HelperService(compile_pb2_grpc.HelperServicer):
    def __init__(self, grants: Grants, leader_epoch: Callable[[], int | None], user: str | None = None,
                 workdir: str | None = None, store: InputStore | None = None, roots: RootPool | None = None,
                 toolchains: ToolchainStore | None = None):
        self.grants = grants
        self.leader_epoch = leader_epoch
        self.compilers = Compilers()
        self.user = user
        self.workdir = workdir   # where fresh job roots go when there is no pool
        self.store = store
        self.roots = roots       # reused job roots (on the store's file system, for hard links)
        self.toolchains = toolchains

    def _inputs(self, request: pb.CompileRequest) -> dict[str, str]:
        """path -> sha256 of the job's InputFiles, storing the contents it carries (hashed here)."""
        if request.inputs and self.store is None:
            raise Refused("this helper keeps no inputs by hash")
        inputs = {}
        for f in request.inputs:
            if f.content or f.sha256 == EMPTY:
                self.store.put(f.sha256, f.content)
            inputs[f.path] = f.sha256
        return inputs

    @contextlib.contextmanager
    def _compiler(self, name: str, identity: str) -> Iterator[str | list[str]]:
        """This agent's compiler `name` if it has `identity`, else the shipped toolchain of
        that identity (kept while the job runs); NoSuchCompiler when there is neither."""
        try:
            yield self.compilers.matching(name, identity)
            return
        except NoSuchCompiler as exc:
            if self.toolchains is None:
                raise
            missing = exc
        with self.toolchains.using(identity) as shipped:
            if shipped is None:
                raise missing
            yield shipped.command(name)

    def Compile(self, request: pb.CompileRequest, context) -> pb.CompileReply:
        try:
            self.grants.follow(self.leader_epoch())
            with self.grants.slot(request.grant, request.epoch), \
                    self._compiler(request.compiler, request.compiler_identity) as compiler:
                job = CompileJob(args=tuple(request.args), source=request.source, cwd=request.cwd,
                                 files={f.path: f.content for f in request.files},
                                 system_dirs=tuple(request.system_dirs), inputs=self._inputs(request),
                                 dep_flags=tuple(request.dep_flags))
                result = run_compile(compiler, job, workdir=self.workdir, user=self.user, store=self.store,
                                     roots=self.roots, locale=dict(request.locale))
        except InputsMissing as exc:
            return pb.CompileReply(missing=exc.digests)
        except (Refused, JobRefused, ContentMismatch) as exc:
            log.info("compile job of %s refused: %s", request.source[:200], exc)
            return pb.CompileReply(refused=str(exc) or type(exc).__name__,
                                   toolchain_wanted=isinstance(exc, NoSuchCompiler) and self.toolchains is not None)
        return pb.CompileReply(exit_code=result.exit_code, object=result.object, diagnostics=result.diagnostics,
                               depfile=result.depfile or b"", has_depfile=result.depfile is not None)

    def Toolchain(self, request_iterator, context) -> pb.ToolchainReply:
        first = next(request_iterator, None)
        if first is None:
            return pb.ToolchainReply(refused="nothing sent")
        try:
            if self.toolchains is None:
                raise Refused("this helper keeps no shipped toolchains")
            self.grants.follow(self.leader_epoch())
            with self.grants.slot(first.grant, first.epoch):
                self.toolchains.receive(first.identity,
                                        itertools.chain([first.data], (chunk.data for chunk in request_iterator)))
        except (Refused, ToolchainRefused) as exc:
            log.info("toolchain %s refused: %s", first.identity[:16], exc)
            return pb.ToolchainReply(refused=str(exc) or type(exc).__name__)
        return pb.ToolchainReply()


class HelperServer:
    """The Helper service on its own threaded gRPC server: `start()` -> bound port; `stop()`.
    tls: (private key, certificate chain, CA) PEM (AgentConfig.helper_tls), or None for plaintext."""

    def __init__(self, listen: str, grants: Grants, leader_epoch: Callable[[], int | None], workers: int,
                 tls: tuple[bytes, bytes, bytes] | None = None, workdir: str | None = None,
                 store_bytes: int | None = None, toolchain_bytes: int = DEFAULT_STORE_BYTES):
        root = hasattr(os, "geteuid") and os.geteuid() == 0
        user = TASK_USER_WHEN_ROOT if root else None
        self._dir, self._temporary = compile_dirs(workdir, user)
        jobs = os.path.join(self._dir, "jobs")
        os.makedirs(jobs, mode=0o711, exist_ok=True)
        os.chmod(self._dir, 0o711)
        store = InputStore(os.path.join(self._dir, "store"), *([store_bytes] if store_bytes else []))
        self.service = HelperService(grants, leader_epoch, user=user, workdir=jobs, store=store,
                                     roots=RootPool(jobs, user, keep=workers),
                                     toolchains=ToolchainStore(os.path.join(self._dir, "toolchains"), toolchain_bytes))
        self.listen = listen
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="helper"),
                                   options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                            ("grpc.max_send_message_length", MAX_MESSAGE)])
        compile_pb2_grpc.add_HelperServicer_to_server(self.service, self._server)
        self._tls = tls
        self.port: int | None = None

    def start(self) -> int:
        """Raises OSError when the address cannot be listened on."""
        if self._tls is not None:
            key, chain, ca = self._tls
            credentials = grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
                                                      require_client_auth=True)
            port = self._server.add_secure_port(self.listen, credentials)
        else:
            port = self._server.add_insecure_port(self.listen)
        if not port:
            raise OSError(f"cannot listen on {self.listen}")
        self._server.start()
        self.port = port
        return port

    def address(self, host: str) -> str:
        """host:port as initiators reach it: the listen host, or `host` for a wildcard."""
        listen_host = self.listen.rpartition(":")[0].strip("[]")
        if listen_host in ("", "0.0.0.0", "::"):
            listen_host = host
        return f"{listen_host}:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(grace + 1)
        if self._temporary:
            shutil.rmtree(self._dir, ignore_errors=True)
