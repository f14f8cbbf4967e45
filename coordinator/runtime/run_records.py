"""The records of `baton run` builds and their jobs (docs/design.md section 8).

The initiator reports over its Cores stream (compile.proto CoreRequest): the
build's start in the first request of every stream, each finished job (by
sequence number), and the end. The coordinator serving agents — whoever
leads, the backup too while it does — records them:

- builds/<id> {kind: "run", name, command, host, submitted} and
  build-status/<id> (kind "run", its jobs counted as a task build's tasks)
  when it first hears of the build; jobs/<id>/<seq> per job
  (cluster.records.JobRecord); the final status once COMMAND has exited and
  every job reported before the end is durable.
- Every write goes through the epoch's fenced group commit (store.py),
  batched with whatever else is being written: never one etcd round trip per
  job, and nothing of this is on the grant path (grants are sent before and
  regardless of any of these writes). A deposed leader's writes fail
  NotLeader and are not acknowledged.
- A job is acknowledged (CoreGrants.acked) only once durable; the initiator
  keeps the unacknowledged ones and sends them again on its next stream (to
  the next leader). Writing a job again puts the same job under the same key
  (a retry is harmless). A job whose write is already durable is acknowledged
  at once; a later leader does not know which were, so its running counts
  may count a resent job twice until the end, whose counts are the
  initiator's own.
- A run build whose initiator has no stream to us for `abandon_after`
  seconds (coordinator.config.Timings.run_abandon: 6 ttl) ends failed, with
  the reason. A new leader starts that clock for the run builds it loads.

Mixed into `dispatcher.Dispatcher`, run on its loop thread only.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import grpc

from cluster.keys import encode
from cluster.names import is_name
from cluster.records import RUN, JobRecord, bounded
from coordinator.runtime import inbox
from coordinator.runtime.epoch_state import EpochState
from lease.errors import NotLeader

log = logging.getLogger("coordinator.runtime.dispatcher")

RETRY_AFTER = 0.5
CHECK_EVERY = 1.0     # s between looks for abandoned run builds
JOBS_PER_WRITE = 100  # job records per submission (a transaction takes at most 128 ops)


@dataclasses.dataclass(eq=False)
class RunBuild:
    id: str
    status: dict                         # build-status/<id> as it is now
    want: Any = None                     # lending.Want of the initiator's stream to us, if any
    gone_since: float = 0.0              # clock time the last stream ended (or we loaded it)
    recorded: set = dataclasses.field(default_factory=set)   # seqs durable (known to this epoch)
    writing: set = dataclasses.field(default_factory=set)    # seqs being written
    end: dict | None = None              # the final status fields, once COMMAND exited or it was abandoned
    final_writing: bool = False
    dirty: bool = False                  # the status changed since written


def run_spec(build_id: str, start, now: float) -> dict:
    command = [bounded(arg) for arg in list(start.command)[:256]]
    return {"id": build_id, "kind": RUN, "name": bounded(" ".join(command), 80) or build_id, "command": command,
            "host": bounded(start.host, 255), "submitted": float(start.started or now), "user": None}


def run_status(spec: dict) -> dict:
    return {"kind": RUN, "state": "running", "name": spec.get("name"), "host": spec.get("host"),
            "submitted": spec.get("submitted"), "started": spec.get("submitted"), "finished": None,
            "total": 0, "done": 0, "failed": 0, "running": 0, "remote": 0, "local": 0,
            "exit_code": None, "wall": None, "reason": ""}


class RunRecording(EpochState):
    """The run builds' side of the Dispatcher (see the module docstring)."""

    runs: dict[str, RunBuild]
    wants: dict
    _wants_by_stream: dict          # lending.py's Wants by their stream
    abandon_after: float

    # -- loading (a takeover) ----------------------------------------------------------
    def _load_run(self, spec: dict, status: dict) -> None:
        build_id = spec.get("id")
        if not isinstance(build_id, str) or build_id in self.runs:
            return
        self.runs[build_id] = RunBuild(build_id, dict(run_status(spec), **status), gone_since=self.clock())

    def _watch_runs(self) -> None:
        """Every CHECK_EVERY s: end the run builds whose initiator is gone for good."""
        now = self.clock()
        for run in list(self.runs.values()):
            if run.want is None and run.end is None and now - run.gone_since >= self.abandon_after:
                host = run.status.get("host") or "its host"
                reason = (f"the initiator on {host} was not heard from for {self.abandon_after:g} s "
                          "(it stopped, or lost the cluster); its jobs are recorded as reported")
                log.warning("run build %s: %s; it ends failed", run.id, reason)
                run.end = {"state": "failed", "reason": reason, "finished": time.time()}
                self._finish_run(run)
        self._after(CHECK_EVERY, self._watch_runs)

    # -- reports -----------------------------------------------------------------------
    def _on_run_reported(self, event: inbox.RunReported) -> None:
        request, stream = event.request, event.stream
        want = self._wants_by_stream.get(stream)
        if want is None:
            return   # the stream ended meanwhile: the initiator sends it all again on the next one
        run = self.runs.get(request.build)
        if run is None:
            if request.build in self.finished_builds:
                # Ended already (its end's ack was lost): nothing more is recorded.
                self._ack(want, [j.seq for j in request.jobs], ended=True)
                return
            if not request.HasField("start"):
                return   # a start comes first on every stream; this one's was refused
            if not is_name(request.build) or request.build in self.builds:
                stream.abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"build id {bounded(request.build, 80)!r} is not a name or names another build")
                return
            run = self.runs[request.build] = self._start_run(request.build, request.start)
        if run.want is not want:
            run.want = want
        known = [j.seq for j in request.jobs if j.seq in run.recorded]
        new = [j for j in request.jobs if j.seq > 0 and j.seq not in run.recorded and j.seq not in run.writing]
        for i in range(0, len(new), JOBS_PER_WRITE):
            self._write_jobs(run, [JobRecord.from_report(j, self.epoch, self.name) for j in new[i:i + JOBS_PER_WRITE]])
        if known:
            self._ack(want, known)
        if request.HasField("end") and run.end is None:
            end = request.end
            jobs, remote, failed = int(end.jobs), int(end.remote), int(end.failed)
            run.end = {"state": "done" if end.exit_code == 0 else "failed", "exit_code": int(end.exit_code),
                       "wall": round(float(end.wall), 2), "finished": float(end.finished or time.time()),
                       "reason": "" if end.exit_code == 0 else f"the command exited with {end.exit_code}",
                       "total": jobs, "remote": remote, "local": jobs - remote, "failed": failed,
                       "done": jobs - failed}
        self._finish_run(run)

    def _start_run(self, build_id: str, start) -> RunBuild:
        spec = run_spec(build_id, start, time.time())
        run = RunBuild(build_id, run_status(spec))
        log.info("run build %s started on %s: %s", build_id, spec["host"], spec["name"])
        self._submit_run(run, "start", [self.etcd.ops.put(self.keys.build(build_id), encode(spec)),
                                        self._run_status_put(run)])
        return run

    def _write_jobs(self, run: RunBuild, records: list[JobRecord]) -> None:
        run.writing.update(r.seq for r in records)
        self._submit_run(run, "jobs", [self.etcd.ops.put(self.keys.job(run.id, r.seq), r.to_json()) for r in records],
                         records)

    def _finish_run(self, run: RunBuild) -> None:
        """Write the final status once every job heard of is durable."""
        if run.end is None or run.writing or run.final_writing:
            return
        run.final_writing = True
        run.status.update(run.end)
        run.dirty = False
        self._submit_run(run, "end", [self._run_status_put(run)])

    def _run_status_put(self, run: RunBuild):
        return self.etcd.ops.put(self.keys.status_of_build(run.id),
                                 encode(dict(run.status, epoch=self.epoch, coordinator=self.name)))

    def _submit_run(self, run: RunBuild, what: str, ops: list, records: list | None = None) -> None:
        post = self.post_event
        future = self.store.submit(ops)
        future.add_done_callback(lambda f: post(inbox.RunWritten(run.id, what, f, records or [])))

    # -- writes resolved -----------------------------------------------------------------
    def _on_run_written(self, event: inbox.RunWritten) -> None:
        run = self.runs.get(event.build_id)
        if run is None:
            return
        error = event.future.exception()
        if error is not None:
            if isinstance(error, NotLeader) or self._stopped.is_set():
                return   # not acknowledged: the initiator sends it to the next leader
            log.warning("run build %s: recording its %s failed (%s); retrying", run.id, event.what, error)
            self._after(RETRY_AFTER, lambda: self._retry_run_write(run, event))
            return
        if event.what == "jobs":
            for record in event.records:
                run.writing.discard(record.seq)
                if record.seq in run.recorded:
                    continue
                run.recorded.add(record.seq)
                s = run.status
                s["total"] += 1
                s["failed" if record.failed else "done"] += 1
                s["remote" if record.remote else "local"] += 1
            run.dirty = True
            if run.want is not None:
                self._ack(run.want, [r.seq for r in event.records])
            self._finish_run(run)
        elif event.what == "end":
            log.info("run build %s ended %s", run.id, run.status["state"])
            del self.runs[run.id]
            self.finished_builds.add(run.id)
            if run.want is not None:
                self._ack(run.want, [], ended=True)

    def _retry_run_write(self, run: RunBuild, event: inbox.RunWritten) -> None:
        if self.runs.get(run.id) is not run:
            return
        if event.what == "jobs":
            run.writing.difference_update(r.seq for r in event.records)
            self._write_jobs(run, [r for r in event.records if r.seq not in run.recorded])
        elif event.what == "end":
            run.final_writing = False
            self._finish_run(run)
        else:
            self._submit_run(run, "start", [self._run_status_put(run)])

    def _write_run_statuses(self) -> None:
        """End of a loop turn: the running counts of run builds that changed (coalesced)."""
        for run in self.runs.values():
            if run.dirty and not run.final_writing:
                run.dirty = False
                self.store.submit([self._run_status_put(run)], coalesce=True)

    # -- streams -----------------------------------------------------------------------
    def _run_stream_gone(self, want) -> None:
        for run in self.runs.values():
            if run.want is want:
                run.want = None
                run.gone_since = self.clock()

    def _ack(self, want, seqs: list[int], ended: bool = False) -> None:
        message = self._grants_message(want)
        message.acked.extend(seqs)
        message.ended = ended
        want.stream.send(message)
