"""The one place that knows the etcd key layout (docs/design.md section 4).

All keys live under /baton/<cluster>/. Values are UTF-8 JSON objects. The
leader, coordinators/, agents/ and events/ values are read and written as the
typed records of cluster.records (one parser each); settings as
cluster.settings.Settings, users/ by cluster.users.

  coordinators/<name>   {name, role, primary, grpc, web, version, ready, ready_since, host}
                        lease: the coordinator's session
  leader                {name, role, grpc, web}; epoch = the key's create revision
                        lease: the leader's session
  settings              {selected_backup, auto_subscribe, max_cores_per_build,
                         deselect_after, failback_delay}
  switchover            {target}: a planned handover asks that coordinator to lead
  backup-contact/<name> {last_seen}: when the leading primary last saw the
                        selected backup registered (the deselection clock)
  agents/<name>         {name, host, cores, group, version, coordinator, epoch}
                        lease: the agent's own
  agent-config/<name>   {disabled, subscribed}   (admin choices; no lease)
  runtime               {coordinator, epoch, time, agents: {name: {connected,
                         running, builds}}}: the leader's live view, for the UI
  builds/<id>           {id, name, submitted, user, tasks: [{id, cmd, deps, timeout}]}
                        the spec as submitted, written once by the web API (one
                        fenced put, so a build appears whole or not at all);
                        a `baton run` build: {id, kind: "run", name, command, host,
                        submitted} written by the coordinator serving agents when
                        the initiator reports its start (coordinator/runtime/run_records.py)
  build-status/<id>     {state: queued|running|done|failed|cancelled, total, done,
                         failed, running, started, finished}: written by the leader
                        (cancelled once a cancelled build's every task has ended);
                        a run build's adds {kind: "run", name, host, remote, local,
                        exit_code, wall, reason} and counts its jobs as its tasks
  build-cancel/<id>     {user, time}: a cancellation asked for, written once by the
                        web API (fenced) where agents are served; the leader acts on
                        it (coordinator/runtime/cancelling.py), also after a failover
  tasks/<id>/<task>     {state: running|done|failed, attempt, agent, assigned,
                         result: {exit_code, duration, output_tail, agent,
                         attempt, error}}: written by the leader; no key means
                        the task has not been assigned yet (queued). A cancelled
                        build's unfinished tasks end failed with error "cancelled"
  jobs/<id>/<seq>       {seq, source, helper, core, started, finished, duration, exit_code,
                         remote, why_local, compiler, epoch, coordinator}: one compile of
                        a run build (cluster.records.JobRecord), written by the leader
                        once the initiator reports it; seq is zero-padded (sorts in order)
  users/<name>          {role, scrypt: {salt, hash, n, r, p}}
  events/<seq>          {type, time, coordinator, epoch, detail}; seq sorts by time
  throttle/address/<address>, throttle/login/<address>/<user>   [failures, locked_until]
                        login throttling shared by every coordinator (web/throttle.py);
                        lease: the counting window or the lockout
  web-sessions/<user>/<id>  {coordinator, created, password}: a UI session that
                        logout, a password change or the user's deletion ends
                        (web/sessions.py); lease: the session's longest life

throttle/ and web-sessions/ are written by the web app of any coordinator,
leading or not, without a fence: they are not cluster state (no decision of
a leader reads them), and a backup must count failed logins and end sessions
too. They sort outside the ranges the UI's snapshot and a takeover read.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote


def prefix_end(prefix: str) -> str:
    """The exclusive end of the etcd range covering every key under prefix."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class Keys:
    """Key names for one cluster. Cheap to build; immutable."""

    def __init__(self, cluster: str = "default"):
        if not cluster or "/" in cluster:
            raise ValueError(f"cluster name {cluster!r} must be non-empty and contain no '/'")
        self.cluster = cluster
        self.root = f"/baton/{cluster}/"
        self.leader = self.root + "leader"
        self.settings = self.root + "settings"
        self.switchover = self.root + "switchover"
        self.runtime = self.root + "runtime"
        self.coordinators = self.root + "coordinators/"
        self.agents = self.root + "agents/"
        self.agent_config = self.root + "agent-config/"
        self.builds = self.root + "builds/"
        self.build_status = self.root + "build-status/"
        self.build_cancels = self.root + "build-cancel/"   # sorts before build-status/ and builds/
        self.tasks = self.root + "tasks/"
        self.jobs = self.root + "jobs/"   # outside every range a takeover or the UI's snapshot reads
        self.users = self.root + "users/"
        self.events = self.root + "events/"
        self.backup_contact = self.root + "backup-contact/"
        self.throttle = self.root + "throttle/"
        self.web_sessions = self.root + "web-sessions/"

    def coordinator(self, name: str) -> str:
        return self.coordinators + name

    def agent(self, name: str) -> str:
        return self.agents + name

    def agent_settings(self, name: str) -> str:
        return self.agent_config + name

    def build(self, build_id: str) -> str:
        return self.builds + build_id

    def status_of_build(self, build_id: str) -> str:
        return self.build_status + build_id

    def cancel_of_build(self, build_id: str) -> str:
        return self.build_cancels + build_id

    def build_tasks(self, build_id: str) -> str:
        return f"{self.tasks}{build_id}/"

    def task(self, build_id: str, task_id: str) -> str:
        return f"{self.tasks}{build_id}/{task_id}"

    def build_jobs(self, build_id: str) -> str:
        return f"{self.jobs}{build_id}/"

    def job(self, build_id: str, seq: int) -> str:
        return f"{self.jobs}{build_id}/{seq:08d}"

    def user(self, name: str) -> str:
        return self.users + name

    def event(self, seq: str) -> str:
        return self.events + seq

    def contact(self, backup: str) -> str:
        return self.backup_contact + backup

    def throttle_address(self, address: str) -> str:
        return f"{self.throttle}address/{quote(address, safe='')}"

    def throttle_login(self, address: str, user: str) -> str:
        # Any typed name ends up here: quoted, so that it stays one key segment.
        return f"{self.throttle}login/{quote(address, safe='')}/{quote(user[:256], safe='')}"

    def user_sessions(self, user: str) -> str:
        return f"{self.web_sessions}{user}/"

    def web_session(self, user: str, session_id: str) -> str:
        return f"{self.web_sessions}{user}/{session_id}"

    @staticmethod
    def name_of(key: bytes | str, prefix: str) -> str:
        """The part of key after prefix ("agents/a1" -> "a1")."""
        if isinstance(key, bytes):
            key = key.decode()
        return key[len(prefix):]


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | str | None) -> Any:
    if raw is None:
        return None
    return json.loads(raw)
