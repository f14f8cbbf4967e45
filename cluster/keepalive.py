"""HTTP/2 keepalive on the agents' streams: the agents' channels ping, the
coordinators accept the pings. Both sides live here because they must agree:
a server that sees pings more often than it allows answers GOAWAY
("too_many_pings") and the client then backs its pings off for good.

Why: an agent keeps one channel per coordinator (agent/channels.py) and
reuses it at every move. When a coordinator's host drops off the network
silently (no RST, no FIN), the TCP connection under that channel stays
"open"; after the host returns, the next stream on it waits for TCP's next
retransmission, seconds after a long cut (measured 3.4 s after a 10 s cut
with tests/harness/netns.py). With a ping every second and a one-second
answer deadline, gRPC finds such a connection dead within about 2 s, and the
channel reconnects on its own backoff (agent/channels.py: at most 1 s), so
the handback to a returning host does not wait on TCP. Measured with
`bench/failover.py --fault cut --agents 200` (8 trials): b1 resigns -> all
agents on p1, ttl 10: median 3.95 s, p99 4.94 s without the pings; median
288 ms, p99 333 ms with them (ttl 2: p99 469 ms -> 419 ms). What is left is
the handback's own cost (the leader key's watch reaching 200 agents, p1
welcoming them), not the network; tests/e2e/test_keepalive.py pins it.

The cost is one small frame per second per agent and coordinator, also on
channels with no call open (the channel to a coordinator that does not lead).
"""
from __future__ import annotations

PING_EVERY_MS = 1000
PING_ANSWER_WITHIN_MS = 1000

CLIENT_OPTIONS = [
    ("grpc.keepalive_time_ms", PING_EVERY_MS),
    ("grpc.keepalive_timeout_ms", PING_ANSWER_WITHIN_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),   # 0: no cap on pings while no data flows
]

SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    # Half the clients' interval, so timer jitter never makes a ping look too early.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", PING_EVERY_MS // 2),
    ("grpc.http2.min_ping_interval_without_data_ms", PING_EVERY_MS // 2),
    ("grpc.http2.max_ping_strikes", 0),          # 0: never GOAWAY a client for its pings
]
