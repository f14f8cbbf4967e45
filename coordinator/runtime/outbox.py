"""Messages to agents, queued per stream during a loop turn of the dispatcher.

At the end of the turn each stream gets all of its messages at once (one
write: an ack and the Assignment it released travel together, see
aio_service). Runs on the dispatcher's thread only.
"""
from __future__ import annotations

from typing import Any, Iterable

from cluster.protocol import agent_pb2 as pb


class Outbox:
    def __init__(self, epoch: int):
        self.epoch = epoch
        self._queued: dict[Any, list[pb.CoordinatorMessage]] = {}   # stream -> this turn's messages

    def message(self, **body: Any) -> pb.CoordinatorMessage:
        """A message of this epoch (rule 4: the agent drops any other)."""
        return pb.CoordinatorMessage(epoch=self.epoch, **body)

    def send(self, stream, message: pb.CoordinatorMessage) -> None:
        """Queue a message for the end of this loop turn (see flush)."""
        queued = self._queued.get(stream)
        if queued is None:
            self._queued[stream] = [message]
        else:
            queued.append(message)

    def send_each(self, streams: Iterable, message: pb.CoordinatorMessage) -> None:
        for stream in streams:
            self.send(stream, message)

    def flush(self) -> None:
        """The end of a loop turn: hand each stream its messages."""
        queued, self._queued = self._queued, {}
        for stream, messages in queued.items():
            stream.send_all(messages)

    def end(self, stream, reason: str) -> None:
        """What is queued for the stream goes out, then the Goodbye."""
        messages = self._queued.pop(stream, None)
        if messages:
            stream.send_all(messages)
        stream.end(reason)
