"""The initiator's jobs half of `baton run` (docs/design.md section 8).

`JobServer` serves the build's `baton cc` processes on a unix socket in the
run directory (framing: cli/ccwire.py): each sends its command line, the
server names the files it reads from its include lines (cli/include_scan.py;
the helper's compile then writes the dependency file) or, when those cannot
be read for sure, scans it (cli/compile_scan.py: that writes the dependency
file and lists the files it reads), takes a free slot of a grant (cli/core_client.py,
waiting up to `wait` seconds), sends the job to that helper (Helper.Compile)
naming its files by hash, with the contents that helper was not sent before
(cli/job_inputs.py), and returns the object and the diagnostics. The scan
and the hashing run here, in the long-lived process, so that `baton cc`
stays a small program and each header is hashed once per build. Anything
else — no leader, no free slot in time, a helper that fails or refuses — is
answered "compile it locally, because ...": never worse than local. With the
cluster's CA (TLS on), a helper is reached over TLS only: it must present a
certificate naming the agent the grant is for
(cluster.names.agent_server_name), and the initiator presents its client
certificate, which helpers require; one channel per helper serves all of the
build's jobs there, so the handshake is paid once.
"""

from __future__ import annotations

import logging
import os
import selectors
import socketserver
import subprocess
import threading
import time

import grpc

from agent.compile_job import LOCALE_VARS
from cli import ccwire
from cli.cc_args import Local, plan
from cli.compile_scan import Scan, ScanFailed, Unshippable, input_paths, scan
from cli.core_client import CoreSource
from cli.compiler_facts import identity as _identity   # kept across builds by stat stamps
from cli.compiler_facts import system_dirs as _system_dirs
from cli.include_scan import IncludeScan, Unsure
from cli.job_inputs import Delivered, Digests
from cli.scan_cache import ScanCache, Uncacheable, cached_scan, depfile, write_file
from cli.scan_cache import cache_dir as scan_cache_dir
from cli.toolchain import Shipper
from cluster.names import agent_server_name
from cluster.protocol import compile_pb2 as pb
from cluster.protocol import compile_pb2_grpc

log = logging.getLogger(__name__)

COMPILE_TIMEOUT = 600.0         # s for one job on a helper
# "0" in the build's environment: every compile scanned by the preprocessor (and the scan
# cache), none by its include lines (cli/include_scan.py).
INCLUDE_SCAN_ENV = "BATON_INCLUDE_SCAN"
MAX_MESSAGE = 80 * 1024 * 1024  # as agent.helper.MAX_MESSAGE


def job_locale(env: dict[str, str]) -> dict[str, str]:
    """The locale a job compiles in on a helper: the compiler's words and quotes follow it,
    so the diagnostics are the local ones; none set is the C locale, not the helper's default."""
    return {name: env[name] for name in LOCALE_VARS if env.get(name)} or {"LANG": "C"}


class JobSocket(socketserver.ThreadingUnixStreamServer):
    """The job server's socket: a thread per connection, and a serving loop that ends as soon as
    `shutdown()` is called. socketserver's own loop notices shutdown() only at its next poll,
    up to half a second later, and every `baton run` waited that out between COMMAND's end and
    its own (0.25 s a build on average, bench/README.md, issue 14): this one also watches a pipe
    that shutdown() writes to."""

    daemon_threads = True

    def __init__(self, path: str, handler):
        super().__init__(path, handler)
        self._wake_read, self._wake_write = os.pipe()
        self._ended = threading.Event()
        self._serving = False

    def start(self) -> None:
        """serve_forever in a thread of its own."""
        self._serving = True
        threading.Thread(target=self.serve_forever, name="cc-jobs", daemon=True).start()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_read, selectors.EVENT_READ)
                while True:
                    ready = selector.select()
                    if any(key.fileobj == self._wake_read for key, _ in ready):
                        return
                    self._handle_request_noblock()   # accept, then a thread for the connection
        finally:
            self._ended.set()

    def shutdown(self) -> None:
        """End serve_forever (no new connections) and wait until it has; the connections' own
        threads finish on their own."""
        if self._serving and not self._ended.is_set():   # a byte written before the loop starts ends it too
            os.write(self._wake_write, b"x")
            self._ended.wait()

    def server_close(self) -> None:
        super().server_close()
        wake, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), -1, -1
        for fd in wake:
            if fd >= 0:
                os.close(fd)


class JobServer:
    """Serves `baton cc` on `<run_dir>/cc.sock`; `start()`, `stop()`."""

    def __init__(self, run_dir: str, cores: CoreSource, wait: float | None, root_certificates: bytes | None = None,
                 client: tuple[bytes, bytes] | None = None):
        self.path = os.path.join(run_dir, ccwire.SOCKET)
        self.cores, self.wait = cores, wait
        key, chain = client if client else (None, None)
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=key,
                                                          certificate_chain=chain)
                             if root_certificates else None)
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], compile_pb2_grpc.HelperStub] = {}
        self._lock = threading.Lock()
        self.digests = Digests()        # the build's files by hash, read once per build
        self.delivered = Delivered()    # what each helper's input store was sent
        self.shipper = Shipper(run_dir)   # our compiler, for helpers that lack it (cli/toolchain.py)
        self.scan_cache = ScanCache(scan_cache_dir(), hashes=self.digests.hashes)   # scans of earlier builds
        self.include_scan = IncludeScan(self.digests.hashes)   # no preprocessor: the include lines
        self.rescans = 0   # of those: scanned after all (a failed compile, no .d from the helper)
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    ccwire.send(self.request, server.compile(ccwire.receive(self.request)))
                except (OSError, ValueError) as exc:
                    log.warning("baton run: a job from baton cc failed: %s", exc)

        # A thread per job: a pool of kept threads measured no different (bench/README.md, w9/jobthread).
        self._server = JobSocket(self.path, Handler)

    def start(self) -> "JobServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for channel in self._channels.values():
                channel.close()

    def _stub(self, address: str, agent: str) -> compile_pb2_grpc.HelperStub:
        """The stub of the one channel to agent `agent` at `address` (made on first use).
        With TLS, gRPC checks the helper's certificate against the agent's server name,
        not the address: a helper with another agent's certificate fails every call."""
        with self._lock:
            stub = self._stubs.get((address, agent))
            if stub is None:   # one stub a channel: its multicallables are made once, not per job
                options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                           ("grpc.max_send_message_length", MAX_MESSAGE)]
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=options)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=[
                        *options, ("grpc.ssl_target_name_override", agent_server_name(agent))])
                self._channels[(address, agent)] = channel
                stub = self._stubs[(address, agent)] = compile_pb2_grpc.HelperStub(channel)
            return stub

    def compile(self, job: dict) -> dict:
        """One job of `baton cc` ({"argv", "cwd", "env"}, cli/ccwire.py): scanned here (that writes
        its dependency file), sent to a helper; {"helper", "exit_code", "object", "diagnostics"}
        or {"local": why}."""
        argv, cwd, env = list(job["argv"]), str(job["cwd"]), dict(job["env"])
        decided = plan(argv)
        if isinstance(decided, Local):
            return {"local": decided.reason}
        # No scan (a preprocessor run, ~15 ms a c-ares job) for a job that compiles here anyway.
        hopeless = self.cores.local_at_once(self.wait)
        if hopeless:
            return {"local": hopeless}
        try:
            identity = _identity(decided.compiler)
            dirs = _system_dirs(decided.compiler, decided.language)
            found, helper_writes_depfile = self._scan(decided, cwd, env, identity, dirs)
            paths = input_paths(decided, cwd, found)
        except Unshippable as exc:
            return {"local": str(exc)}
        except ScanFailed:
            return {"local": "the scan failed (the compile says why)"}
        except (OSError, subprocess.SubprocessError) as exc:
            return {"local": f"cannot scan the compile: {exc}"}
        grant, slot, why = self.cores.acquire_core(self.wait)
        if grant is None:
            return {"local": why}
        on_core = time.time()   # the job's bar on the build monitor's core lane starts here, not at `baton cc`'s start
        try:
            request = pb.CompileRequest(
                grant=grant.grant, epoch=grant.epoch, compiler=os.path.basename(decided.compiler),
                compiler_identity=identity, args=decided.flags, source=decided.source,
                cwd=os.path.abspath(cwd), system_dirs=dirs,
                inputs=self.digests.inputs(paths, self.delivered.lacks(grant.helper), found.seen),
                # A scanned -MMD compile's .d too comes from the helper's compile, over the
                # scan's: Clang's `-MM -H` (the scan) names the system headers -MMD leaves out.
                locale=job_locale(env),
                dep_flags=decided.dep_flags if helper_writes_depfile or "-MMD" in decided.dep_flags else ())
            reply = self._send(grant, request, decided.compiler)
        except OSError as exc:
            return {"local": f"cannot read the compile's files: {exc}"}
        except grpc.RpcError as exc:
            # The details say why, e.g. that the helper's certificate names another agent.
            details = (exc.details() or "")[-300:]
            return {"local": f"helper {grant.agent} failed: {exc.code().name}" + (f" ({details})" if details else "")}
        finally:
            off_core = time.time()
            self.cores.release(grant, slot)
        if reply.refused or reply.missing:
            return {"local": f"helper {grant.agent} refused: {reply.refused or 'inputs missing twice'}"}
        if helper_writes_depfile:
            why = self._after_include_scan(decided, cwd, env, paths, reply)
            if why:
                return {"local": why}
        elif reply.exit_code == 0 and reply.has_depfile:   # -MMD, over the scan's
            why = self._write_depfile(decided, cwd, reply.depfile)
            if why:
                return {"local": why}
        self.cores.helpers_used.add(grant.agent)
        return {"helper": grant.agent, "exit_code": reply.exit_code, "core": slot, "object": reply.object,
                "diagnostics": reply.diagnostics, "core_started_ms": round(on_core * 1000),
                "core_finished_ms": round(off_core * 1000)}

    def _scan(self, decided, cwd: str, env: dict, identity: str, dirs: tuple[str, ...]) -> tuple[Scan, bool]:
        """The files the compile reads, and whether the helper is to write its dependency file: from
        the include lines when they are sure (cli/include_scan.py), else the scan (from the cache
        when it holds it), which writes the dependency file here."""
        if env.get(INCLUDE_SCAN_ENV) != "0":
            seen: dict = {}
            try:
                files = self.include_scan.files(decided, cwd, env, dirs, seen)
            except Unsure as exc:
                log.debug("baton run: %s: scanned: %s", decided.source, exc)
            else:
                return Scan(headers=tuple(files[1:]), seen=seen), True
        return cached_scan(self.scan_cache, decided, cwd, env, identity, dirs,
                           lambda: scan(decided, cwd, env=env)), False

    def _after_include_scan(self, decided, cwd: str, env: dict, sent: list[str], reply: pb.CompileReply) -> str | None:
        """A job whose files the include lines named: write its dependency file, as the helper
        wrote it; None, or why the job compiles here after all. A failed compile is checked by a
        scan (which writes the dependency file as the compile does): it stands only when the
        helper had every file the preprocessor reads here, else a header was missed and the
        compile runs here, with its own words (never worse than local)."""
        try:
            named = depfile(decided)   # None: the compile writes none
        except Uncacheable as exc:
            return f"no dependency file name: {exc}"
        if reply.exit_code == 0 and (named is None or reply.has_depfile):
            return self._write_depfile(decided, cwd, reply.depfile) if named is not None else None
        with self._lock:
            self.rescans += 1
        try:   # failed, or a helper that did not write the dependency file: scan, as before
            found = scan(decided, cwd, env=env)
        except Unshippable as exc:
            return f"the compile failed on the helper; the scan here: {exc}"
        except ScanFailed:
            return "the compile failed on the helper and the scan here (the compile says why)"
        except (OSError, subprocess.SubprocessError) as exc:
            return f"cannot scan the compile: {exc}"
        if not set(input_paths(decided, cwd, found)) <= set(sent):
            return "the helper lacked a header the include lines did not name"
        return None

    @staticmethod
    def _write_depfile(decided, cwd: str, content: bytes) -> str | None:
        """The helper's .d written where the compile writes it; None, or why the job compiles here."""
        try:
            write_file(os.path.join(cwd, depfile(decided)), content)
        except (OSError, Uncacheable) as exc:
            return f"cannot write the dependency file: {exc}"
        return None

    def _send(self, grant: pb.Grant, request: pb.CompileRequest, compiler: str) -> pb.CompileReply:
        """Helper.Compile. When the helper lacks our compiler, ship it (once per helper,
        cli/toolchain.py) and send the job again; a compiler that could not be shipped: the
        refusal says why. Once more with the contents it answers `missing` (evicted or restarted)."""
        stub = self._stub(grant.helper, grant.agent)
        reply = stub.Compile(request, timeout=COMPILE_TIMEOUT)
        if reply.refused and reply.toolchain_wanted:
            why = self.shipper.ship(stub, grant, compiler, request.compiler_identity)
            if why:
                return pb.CompileReply(refused=f"{reply.refused}; {why}")
            reply = stub.Compile(request, timeout=COMPILE_TIMEOUT)
        if not reply.refused:   # a refused job may have stored nothing
            self.delivered.sent(grant.helper, request.inputs)
        if reply.missing:
            missing = set(reply.missing)
            self.delivered.lost(grant.helper, missing)
            files = list(request.inputs)
            del request.inputs[:]
            request.inputs.extend(self.digests.input(f.path, missing.__contains__) for f in files)
            reply = stub.Compile(request, timeout=COMPILE_TIMEOUT)
            if not reply.refused:
                self.delivered.sent(grant.helper, request.inputs)
        return reply
