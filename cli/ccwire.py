"""How `baton cc` and its `baton run` talk over the run's unix socket.

Standard library only, and only modules that cost nothing to import:
`baton cc` runs once per compile without site-packages, and `json` alone
(through `re` and `enum`) costs it ~7 ms a start. A frame is an 8-byte
big-endian length and that many bytes of `marshal` data (a dict of str, int,
bytes, lists and dicts). Both ends are the same Python (`baton run` writes
the wrapper with its own interpreter), and the socket lives in the run's
private directory (mode 0700), so only the build's own processes reach it:
marshal is safe here, it builds data and runs nothing. One request frame,
one reply frame, per connection.

A request: {"argv": the compiler command, "cwd", "env": the compile's
environment}. A reply: {"helper", "exit_code", "object", "diagnostics"}
when a helper compiled it, else {"local": why it compiles here}.
"""
from __future__ import annotations

import marshal

SOCKET = "cc.sock"   # in $BATON_RUN_DIR
MAX_FRAME = 512 * 1024 * 1024
_LENGTH = 8


def send(sock, message: dict) -> None:
    data = marshal.dumps(message)
    sock.sendall(len(data).to_bytes(_LENGTH, "big") + data)


def _exactly(sock, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other end closed the connection mid-frame")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def receive(sock) -> dict:
    """One frame; ConnectionError for a short or oversized one, ValueError for one that is not a dict."""
    size = int.from_bytes(_exactly(sock, _LENGTH), "big")
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes")
    try:
        message = marshal.loads(_exactly(sock, size))
    except (EOFError, TypeError) as exc:
        raise ValueError(f"not a frame: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("a frame that is not a dict")
    return message
