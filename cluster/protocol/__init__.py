"""The agent protocol (agent.proto) and the compile protocol (compile.proto), with their committed stubs (tests/test_protocol.py keeps them in step)."""
from __future__ import annotations


def unbatched(message):
    """The CoordinatorMessages one received message carries, in order (a Batch carries several)."""
    return list(message.batch.messages) if message.WhichOneof("body") == "batch" else [message]
