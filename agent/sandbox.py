"""What a task may see: its user, its environment, its directories (docs/design.md section 9).

Build tasks are untrusted code. The agent holds secrets (the cluster token,
its TLS key, whatever its own environment carries, e.g. BATON_ADMIN_PASSWORD
under `baton up`), so a task gets:

- a clean environment, built here from nothing: PATH, HOME (the build's
  work directory), LANG, TMPDIR (a directory of its own, removed when the
  task ends), the build file's `env`, and BATON_BUILD_ID / BATON_TASK_ID /
  BATON_TASK_ATTEMPT (which task this is; nothing secret). PATH is the
  agent's own when it has one: it names the directories where the operator
  installed the tools builds use (compilers in /opt, a virtualenv), never a
  secret, and a fixed list would break those builds; else a system default.
- another user when the agent runs as root (`--task-user`, default
  `nobody`; see TaskUser.wrap), with no supplementary groups and umask 077, so files the agent
  keeps with mode 0600/0700 (token, keys, `.results`) are out of its reach.
  An agent that is not root cannot switch users: it runs tasks as itself,
  and asking for another task user is refused at start.

Directories the agent creates for a task (the build's work directory, the
task's temp directory) are made by the agent in directories only the agent
can write (the work directory root, `<workdir>/.tmp`), then handed to the
task user, so a task can never steer the agent into a path of its choosing
through a symlink.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import stat
import sys

from lease.errors import ConfigError

DEFAULT_TASK_USER = "nobody"     # when the agent runs as root
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LANG = "C.UTF-8"
TASK_UMASK = 0o077
# argv: uid gid program args...; exit 126 (as a shell does for "cannot execute") if it cannot.
_DROP_AND_EXEC = """import os, sys
try:
    os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[1]))
    os.execv(sys.argv[3], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"the agent could not start the task as uid {sys.argv[1]}: {exc}\\n"); sys.exit(126)
"""
TMP_DIR = ".tmp"                 # <workdir>/.tmp/<one per task attempt>; names starting "." are the agent's


@dataclasses.dataclass(frozen=True)
class TaskUser:
    """The user tasks run as, when it is not the agent's own."""

    name: str
    uid: int
    gid: int

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run as this user, with no other groups: a small Python step drops root, then
        execs argv. Not subprocess.Popen(user=, group=, extra_groups=): those make it fork()
        instead of vfork(), which runs gRPC's fork handlers in the child, and those crash
        it ("Check failed: next_worker->state == KICKED", SIGSEGV) while the agent's
        streams are busy. The exec keeps the pid, so the process group is still the task's."""
        return [sys.executable, "-I", "-S", "-c", _DROP_AND_EXEC, str(self.uid), str(self.gid), *argv]


def resolve_task_user(name: str | None, euid: int | None = None) -> TaskUser | None:
    """The task user for an agent running with euid (default: this process's).

    Root: `name`, or `nobody` when none is given. Not root: None (tasks run
    as the agent itself); naming any other user is a ConfigError, since only
    root can switch users. Raises ConfigError for an unknown user.
    """
    euid = os.geteuid() if euid is None else euid
    if name is None and euid != 0:
        return None
    wanted = name or DEFAULT_TASK_USER
    try:
        entry = pwd.getpwuid(int(wanted)) if wanted.isdigit() else pwd.getpwnam(wanted)
    except (KeyError, OverflowError):
        raise ConfigError(f"task user {wanted!r} does not exist on this machine") from None
    if entry.pw_uid == euid:
        return None  # the agent's own user: nothing to switch
    if euid != 0:
        raise ConfigError(f"--task-user {wanted} needs an agent running as root: this agent runs as uid "
                          f"{euid} and cannot switch users (leave --task-user out to run tasks as itself)")
    return TaskUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def task_environment(build_env: dict[str, str], home: str, tmpdir: str, build_id: str, task_id: str,
                     attempt: int, agent_env: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of one task; nothing else of the agent's passes."""
    agent_env = os.environ if agent_env is None else agent_env
    env = {"PATH": agent_env.get("PATH") or DEFAULT_PATH, "HOME": home,
           "LANG": agent_env.get("LANG") or DEFAULT_LANG, "TMPDIR": tmpdir}
    env.update(build_env)
    env.update(BATON_BUILD_ID=build_id, BATON_TASK_ID=task_id, BATON_TASK_ATTEMPT=str(attempt))
    return env


def prepare_workdir(workdir: str, user: TaskUser | None) -> None:
    """Create the agent's work directory. With a task user it is the agent's,
    mode 0711: tasks can enter their build's directory but not list the others'
    or the agent's own (.results, .tmp). Raises ConfigError when the task user
    cannot reach it (a parent directory closed to others, e.g. under /root)."""
    try:
        os.makedirs(workdir, mode=0o711, exist_ok=True)
        os.makedirs(os.path.join(workdir, TMP_DIR), mode=0o711, exist_ok=True)
        if user is not None:
            os.chmod(workdir, 0o711)
    except OSError as exc:
        raise ConfigError(f"cannot create the work directory {workdir}: {exc.strerror}") from None
    if user is not None:
        closed = first_closed_parent(workdir, user)
        if closed is not None:
            raise ConfigError(f"tasks run as {user.name}, who cannot enter {closed} on the way to the work "
                              f"directory {workdir}: choose a --workdir that others can reach")


def first_closed_parent(path: str, user: TaskUser) -> str | None:
    """The first directory from / to path that user cannot enter (no x permission), or None.
    Reads the mode bits for the user's uid and primary group only: tasks get no other groups."""
    current = "/"
    for part in [p for p in os.path.abspath(path).split("/") if p] + [None]:
        st = os.stat(current)
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return current
        if part is not None:
            current = os.path.join(current, part)
    return None


def make_task_dir(parent: str, name: str, user: TaskUser | None) -> str:
    """Create parent/name (parent is the agent's) for the task user; an existing one
    (a build's second task) is handed to the user again. Returns its path."""
    path = os.path.join(parent, name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(f"{path} is not a directory") from None
    if user is not None:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)
    return path


def remove_task_dir(path: str) -> None:
    """Remove a task's temp directory. shutil.rmtree does not follow symlinks inside it."""
    shutil.rmtree(path, ignore_errors=True)
