"""agent_protocol's identity rules as plain data: who may say Hello under which name."""
from __future__ import annotations

import grpc

from coordinator.runtime.agent_protocol import ConnectedAgents, hello_refusal


class Stream:
    def __init__(self, agent, epoch=5, heard=0.0):
        self.agent, self.epoch, self.heard, self.closed = agent, epoch, heard, False


def test_a_live_agents_name_is_refused_and_freed_when_its_stream_dies_or_falls_silent():
    now = [100.0]
    connected = ConnectedAgents(silent_after=3.0, clock=lambda: now[0])
    first = Stream("a1", heard=99.5)
    assert connected.admit(first) is None
    assert connected.admit(Stream("a1", heard=now[0])) == "agent a1 is already connected"
    assert connected.admit(Stream("a2")) is None, "other names are not affected"
    # Half-open: the old stream is still open but has not been heard from for 3 s.
    now[0] = 102.4
    assert connected.admit(Stream("a1")) is not None
    now[0] = 102.6
    back = Stream("a1", heard=now[0])
    assert connected.admit(back) is None
    # Closed (the agent process died): admitted at once.
    back.closed = True
    again = Stream("a1", heard=now[0])
    assert connected.admit(again) is None
    # Gone: the name is free; a stale gone() of a replaced stream frees nothing.
    connected.gone(back)
    assert connected.admit(Stream("a1", heard=now[0])) == "agent a1 is already connected"
    connected.gone(again)
    assert connected.admit(Stream("a1", heard=now[0])) is None


def test_a_stream_of_an_earlier_epoch_does_not_hold_the_name():
    connected = ConnectedAgents(clock=lambda: 10.0)
    assert connected.admit(Stream("a1", epoch=5, heard=10.0)) is None
    assert connected.admit(Stream("a1", epoch=6, heard=10.0)) is None


def test_hello_refusals():
    assert hello_refusal("a1", None) is None
    assert hello_refusal("a1", frozenset({"a1"})) is None
    code, details = hello_refusal("a2", frozenset({"a1"}))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == "this client certificate does not name agent a2 (it names a1)"
    assert hello_refusal("a1", frozenset())[0] == grpc.StatusCode.PERMISSION_DENIED
    code, details = hello_refusal("x" * 10_000, None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200


def test_a_pool_certificate_may_say_hello_under_any_valid_name_but_not_an_invalid_one():
    assert hello_refusal("3f2a9c1b7d0e", frozenset({"*"})) is None
    assert hello_refusal("../../x", frozenset({"*"}))[0] == grpc.StatusCode.INVALID_ARGUMENT
