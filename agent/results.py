"""Results that finished but were not acknowledged by a coordinator yet.

A result is kept until a ResultAck for its (build, task, attempt) arrives:
in memory, and (unless the buffer is memory-only) as one small JSON file in
`<workdir>/.results/`, written before the result is offered to anyone, so an
agent that restarts, or a machine that reboots, still delivers it in its next
Hello. The file is removed on ack.

If the disk refuses a write, the result is still kept in memory (logged):
losing it on a restart is better than crashing the agent.
"""
from __future__ import annotations

import json
import logging
import os
import threading

from agent.runner import TaskRef, TaskResult
from cluster.files import write_json_atomically

log = logging.getLogger(__name__)

RESULTS_DIR = ".results"


def _file_name(ref: TaskRef) -> str:
    return ref.digest() + ".json"


class ResultBuffer:
    """Unacknowledged results, oldest first. Thread-safe."""

    def __init__(self, directory: str | None):
        """directory None keeps results in memory only (the bench pool)."""
        self.directory = directory
        self._lock = threading.Lock()
        self._results: dict[TaskRef, TaskResult] = {}
        if directory is not None:
            # 0700: tasks (agent/sandbox.py) must not read other tasks' output here.
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)

    @classmethod
    def in_workdir(cls, workdir: str) -> "ResultBuffer":
        return cls(os.path.join(workdir, RESULTS_DIR))

    def load(self) -> list[TaskResult]:
        """Read the results an earlier run left on disk (oldest first). An
        unreadable file is renamed to *.bad and logged, not fatal."""
        if self.directory is None:
            return []
        found = []
        for entry in os.scandir(self.directory):
            if not entry.name.endswith(".json") or not entry.is_file():
                continue
            try:
                with open(entry.path, encoding="utf-8") as f:
                    result = TaskResult.from_json(json.load(f))
                found.append((entry.stat().st_mtime, result))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable result file %s (%s); renamed to .bad", entry.path, exc)
                try:
                    os.replace(entry.path, entry.path + ".bad")
                except OSError:
                    pass
        found.sort(key=lambda pair: pair[0])
        with self._lock:
            for _, result in found:
                self._results.setdefault(result.task, result)
        return [r for _, r in found]

    def add(self, result: TaskResult) -> None:
        """Keep the result until ack(); durable on disk before this returns."""
        if self.directory is not None:
            try:
                self._write(result)
            except OSError as exc:
                log.error("could not save the result of %s to %s (%s); keeping it in memory only",
                          result.task, self.directory, exc)
        with self._lock:
            self._results[result.task] = result

    def ack(self, ref: TaskRef) -> bool:
        """Forget the result (memory and disk). False if it was not buffered."""
        if self.directory is not None:
            try:
                os.unlink(os.path.join(self.directory, _file_name(ref)))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("could not remove the acknowledged result file of %s: %s", ref, exc)
        with self._lock:
            return self._results.pop(ref, None) is not None

    def get(self, ref: TaskRef) -> TaskResult | None:
        with self._lock:
            return self._results.get(ref)

    def pending(self) -> list[TaskResult]:
        with self._lock:
            return list(self._results.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def _write(self, result: TaskResult) -> None:
        write_json_atomically(os.path.join(self.directory, _file_name(result.task)), result.to_json(),
                              durable=True)
