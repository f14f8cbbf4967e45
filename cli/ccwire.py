"""How `baton cc` and its `baton run` talk over the run's unix socket (standard library only:
`baton cc` runs without site-packages, so neither grpc nor protobuf is importable there).

A frame is a 4-byte big-endian length, that many bytes of JSON (the header),
then the raw bytes of each blob the header's "blobs" list gives the length of.
One request frame, one reply frame, per connection.
"""
from __future__ import annotations

import json
import socket
import struct

SOCKET = "cc.sock"   # in $BATON_RUN_DIR
MAX_HEADER = 16 * 1024 * 1024
_LENGTH = struct.Struct(">I")


def send(sock: socket.socket, header: dict, blobs: list[bytes] = ()) -> None:
    head = json.dumps(dict(header, blobs=[len(b) for b in blobs]), separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _exactly(sock: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other end closed the connection mid-frame")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def receive(sock: socket.socket) -> tuple[dict, list[bytes]]:
    (size,) = _LENGTH.unpack(_exactly(sock, _LENGTH.size))
    if size > MAX_HEADER:
        raise ConnectionError(f"a frame header of {size} bytes")
    header = json.loads(_exactly(sock, size))
    return header, [_exactly(sock, int(n)) for n in header.pop("blobs", [])]
