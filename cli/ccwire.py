"""How `baton cc` and its `baton run` talk over the run's unix socket.

Two programs speak it: cli/cc.py and the native wrapper, cli/native/baton_cc.c
(docs/internals.md), so it is plain length-prefixed fields, not a Python
format. Standard library only, and only modules that cost nothing to import:
`baton cc` runs once per compile without site-packages, and `json` alone
(through `re` and `enum`) costs it ~7 ms a start. The socket lives in the
run's private directory (mode 0700), so only the build's own processes reach it.
One request frame, one reply frame, per connection.

A frame: an 8-byte big-endian length, then that many bytes of fields, each

    key length (4 bytes, big-endian), key (UTF-8), tag (1 byte),
    value length (4 bytes, big-endian), value

All lengths are of bytes. Tags: `s` str (UTF-8; undecodable file names
round-trip as surrogateescape does), `b` bytes, `i` int (8 bytes, signed,
big-endian), `f` float (its repr, ASCII), `n` None (empty), `B` bool (one byte),
`l` a list of str (each: 4-byte length, bytes), `d` a dict of str to str
(key, value, key, value, ... each as a list item). A reader skips keys it does
not know, so a field can be added without the other side changing.

A request: {"argv": the compiler command, "cwd", "env": the compile's
environment}. A reply: {"helper", "exit_code", "core", "object",
"diagnostics", "core_started_ms", "core_finished_ms" (unix time in ms: when
the job held the helper's core)} when a helper compiled it, else {"local":
why it compiles here}.
"""
from __future__ import annotations

SOCKET = "cc.sock"   # in $BATON_RUN_DIR
MAX_FRAME = 512 * 1024 * 1024
_LENGTH = 8


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _items(values) -> bytes:
    parts = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"a list or dict item that is not a str: {type(value).__name__}")
        data = _text(value)
        parts += (len(data).to_bytes(4, "big"), data)
    return b"".join(parts)


def _value(value) -> tuple[bytes, bytes]:
    if isinstance(value, bool):
        return b"B", b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return b"i", value.to_bytes(8, "big", signed=True)
    if isinstance(value, str):
        return b"s", _text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b", bytes(value)
    if value is None:
        return b"n", b""
    if isinstance(value, float):
        return b"f", repr(value).encode()
    if isinstance(value, (list, tuple)):
        return b"l", _items(value)
    if isinstance(value, dict):
        return b"d", _items(x for pair in value.items() for x in pair)
    raise ValueError(f"cannot send a {type(value).__name__}")


def encode(message: dict) -> bytes:
    """One frame (the length first); ValueError for a value the format has no tag for."""
    parts = []
    for key, value in message.items():
        tag, data = _value(value)
        name = _text(key)
        if len(data) >= 1 << 32:
            raise ValueError(f"a field of {len(data)} bytes")
        parts += (len(name).to_bytes(4, "big"), name, tag, len(data).to_bytes(4, "big"), data)
    body = b"".join(parts)
    return len(body).to_bytes(_LENGTH, "big") + body


def _strings(data: memoryview) -> list[str]:
    # On bytes, not the memoryview: one copy, then slices (each job's argv and environment,
    # ~100 items, decoded in `baton run`: ~2x faster).
    raw, out, at, end = bytes(data), [], 0, len(data)
    while at < end:
        if end - at < 4:
            raise ValueError("not a frame: a list item runs past its field")
        size = int.from_bytes(raw[at:at + 4], "big")
        at += 4
        if end - at < size:
            raise ValueError("not a frame: a list item runs past its field")
        out.append(raw[at:at + size].decode("utf-8", "surrogateescape"))
        at += size
    return out


def decode(body: bytes) -> dict:
    """The fields of one frame's body; ValueError for a malformed one."""
    view, at, message = memoryview(body), 0, {}
    while at < len(view):
        if len(view) - at < 4:
            raise ValueError("not a frame: a field runs past its end")
        size = int.from_bytes(view[at:at + 4], "big")
        at += 4
        if len(view) - at < size + 5:
            raise ValueError("not a frame: a field runs past its end")
        key = bytes(view[at:at + size]).decode("utf-8", "surrogateescape")
        tag = bytes(view[at + size:at + size + 1])
        at += size + 1
        size = int.from_bytes(view[at:at + 4], "big")
        at += 4
        if len(view) - at < size:
            raise ValueError("not a frame: a field runs past its end")
        data = view[at:at + size]
        at += size
        if tag == b"s":
            message[key] = bytes(data).decode("utf-8", "surrogateescape")
        elif tag == b"b":
            message[key] = bytes(data)
        elif tag == b"i" and size == 8:
            message[key] = int.from_bytes(data, "big", signed=True)
        elif tag == b"n" and size == 0:
            message[key] = None
        elif tag == b"B" and size == 1:
            message[key] = data[0] != 0
        elif tag == b"f":
            try:
                message[key] = float(bytes(data).decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"not a frame: {key!r} is not a float") from None
        elif tag == b"l":
            message[key] = _strings(data)
        elif tag == b"d":
            items = _strings(data)
            if len(items) % 2:
                raise ValueError(f"not a frame: {key!r} has a key without a value")
            message[key] = dict(zip(items[::2], items[1::2]))
        else:
            raise ValueError(f"not a frame: field {key!r} has tag {tag!r} of {size} bytes")
    return message


def send(sock, message: dict) -> None:
    sock.sendall(encode(message))


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
    """One frame; ConnectionError for a short or oversized one, ValueError for a malformed one."""
    size = int.from_bytes(_exactly(sock, _LENGTH), "big")
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes")
    return decode(_exactly(sock, size))
