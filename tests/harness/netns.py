"""A host that can vanish: a process in its own network namespace, joined to
the root namespace by a wire (veth pairs and a bridge) that can be cut silently.

Why not a proxy (tests/harness/proxy.py): a proxy in user space is itself a
process that closes or holds connections; a lost host is the kernel's view
of a wire where packets go and nothing comes back. Here the kernel sees
exactly that:

- `Netns()` creates namespace `baton-<pid>-<n>` and a "wire" namespace
  beside it holding a bridge; one veth pair joins the root namespace to the
  wire, another the wire to the namespace. The root side's end has `.1` of
  a /30 of 10.213.0.0/16, the namespace's `.2` (only these and loopback are
  ever traffic targets). Loopback is up in the namespace, and both sides
  have permanent neighbour entries, so that no ARP is needed once the link
  is cut (a failed ARP makes the kernel report "no route to host" to the
  sender: not silent).
- `cut()` puts a token bucket (tc `tbf`) of one byte on the egress of both
  of the wire's ends: every packet is larger than the bucket, so the wire
  loses every packet, both ways. The endpoints' own devices stay up with
  their routes, and what they send leaves them without an error, as on a
  real network whose far host is gone: nothing is refused or reset,
  connects time out, established connections hear nothing and TCP keeps
  retransmitting (for ~15 minutes). `heal()` removes the buckets; held
  connections resume with TCP's next retransmission.
  Why this shape: `ip link set down` removes routes (senders get "network
  is unreachable" at once); netem's `loss 100%` and tc filters need kernel
  modules this machine lacks; and a bucket on an endpoint's own device
  drops locally, which TCP counts against the connection (it timed out in
  ~8 s here).
- `wrap(argv)` runs a command inside the namespace (`ip netns exec` execs
  it: the process keeps its pid, so signals reach it as usual).

`NetnsCluster` is a cli.local.LocalCluster whose primary p1 runs in such a
namespace: etcd also listens on the root side's address, p1 uses that, and
listens and advertises on the namespace side's address, so the backup,
the agents and the test reach it only over the wire. No TLS (the
local CA's certificates name "localhost").

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2 (.ci/run installs
it); `unavailable()` returns why not, for a skip.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

from cli.local import LocalCluster

SUBNETS = ipaddress.ip_network("10.213.0.0/16")
_count = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def _tc(netns: str | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "tc", *args], capture_output=True, text=True, check=check, timeout=10)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of SUBNETS that no interface of the root namespace uses."""
    used = {ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
            for a in link.get("addr_info", [])}
    subnets = list(SUBNETS.subnets(new_prefix=30))
    start = (os.getpid() * 31 + next(_count)) % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /30 left in {SUBNETS}")


def _remove_stale() -> None:
    """Namespaces of ours whose creator died without closing them (a killed test run): their
    names go, and with the wire's namespace its veth pairs."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 3 and parts[0] == "baton" and parts[1].isdigit() and int(parts[1]) != os.getpid():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                _ip("netns", "del", name, check=False)
            except PermissionError:
                pass


class Netns:
    """One namespace, its wire and the veth pairs (module docstring). `close()` removes them."""

    def __init__(self):
        _remove_stale()
        n = next(_count)
        self.name = f"baton-{os.getpid()}-{n}"
        self.wire = f"{self.name}-wire"
        self.outer_if, self.inner_if = f"btr{os.getpid()}{n}"[:15], f"btn{os.getpid()}{n}"[:15]
        subnet = _free_subnet()
        outer, inner = list(subnet.hosts())
        self.outer, self.inner = str(outer), str(inner)   # root side's address, the namespace's
        self.is_cut = False
        self._created: list[str] = []
        try:
            self._create(subnet.prefixlen)
        except BaseException:
            self.close()
            raise

    def _create(self, prefix: int) -> None:
        for netns in (self.name, self.wire):
            _ip("netns", "add", netns)
            self._created.append(netns)
        _ip("link", "add", "name", self.outer_if, "type", "veth", "peer", "name", "wire-out", "netns", self.wire)
        _ip("-n", self.wire, "link", "add", "name", "wire-in", "type", "veth", "peer", "name", self.inner_if,
            "netns", self.name)
        _ip("-n", self.wire, "link", "add", "name", "wire", "type", "bridge")
        for end in ("wire-out", "wire-in"):
            _ip("-n", self.wire, "link", "set", end, "master", "wire")
        _ip("addr", "add", f"{self.outer}/{prefix}", "dev", self.outer_if)
        _ip("-n", self.name, "addr", "add", f"{self.inner}/{prefix}", "dev", self.inner_if)
        for args in (["link", "set", self.outer_if, "up"], ["-n", self.name, "link", "set", self.inner_if, "up"],
                     ["-n", self.name, "link", "set", "lo", "up"], ["-n", self.wire, "link", "set", "wire", "up"],
                     ["-n", self.wire, "link", "set", "wire-out", "up"],
                     ["-n", self.wire, "link", "set", "wire-in", "up"]):
            _ip(*args)
        # Permanent neighbours: a cut link must not end in a failed ARP (reported to senders).
        _ip("neigh", "replace", self.inner, "lladdr", self._mac(self.name, self.inner_if), "dev", self.outer_if,
            "nud", "permanent")
        _ip("-n", self.name, "neigh", "replace", self.outer, "lladdr", self._mac(None, self.outer_if),
            "dev", self.inner_if, "nud", "permanent")

    @staticmethod
    def _mac(netns: str | None, interface: str) -> str:
        args = (["-n", netns] if netns else []) + ["-j", "link", "show", interface]
        return json.loads(_ip(*args).stdout)[0]["address"]

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Lose every packet both ways on the wire from now on (module docstring)."""
        for end in ("wire-out", "wire-in"):
            _tc(self.wire, "qdisc", "replace", "dev", end, "root", "tbf", "rate", "8bit", "burst", "1", "limit", "1")
        self.is_cut = True

    def heal(self) -> None:
        for end in ("wire-out", "wire-in"):
            _tc(self.wire, "qdisc", "del", "dev", end, "root", check=False)
        self.is_cut = False

    def close(self) -> None:
        """Remove the veth pairs and the namespaces' names; processes still in the
        namespace keep it alive, without a network, until they end."""
        if self._created:
            _ip("link", "del", self.outer_if, check=False)
        for netns in reversed(self._created):
            _ip("netns", "del", netns, check=False)   # the wire's veth ends and bridge go with it
        self._created = []


def unavailable() -> str | None:
    """Why a namespace with a cuttable link cannot be made here (None: it can)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    try:
        probe = Netns()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        return f"cannot create a network namespace with a veth pair here: {detail.strip()}"
    try:
        probe.cut()
    except subprocess.CalledProcessError as exc:
        return f"cannot cut a veth link with tc tbf here: {exc.stderr.strip()}"
    finally:
        probe.close()
    return None


class NetnsCluster(LocalCluster):
    """A LocalCluster whose p1 runs in its own network namespace (module docstring).
    `netns` is that namespace: `netns.cut()` makes p1's host vanish. `stop()` also
    removes the namespace."""

    ISOLATED = "p1"

    def __init__(self, directory: str | Path, **kw):
        if kw.setdefault("tls", False):
            raise ValueError("NetnsCluster runs without TLS (the certificates name localhost)")
        super().__init__(directory, **kw)
        self.netns = Netns()
        self.etcd_listen = ("127.0.0.1", self.netns.outer)

    def _start_etcd(self) -> None:
        super()._start_etcd()
        port = self.etcd_urls.rsplit(":", 1)[1]
        self.etcd_for[self.ISOLATED] = f"http://{self.netns.outer}:{port}"

    def coordinator_argv(self, name: str, role: str, etcd_urls: str | None = None) -> list[str]:
        argv = super().coordinator_argv(name, role, etcd_urls)
        if name != self.ISOLATED:
            return argv
        host = self.netns.inner
        web_port = int(self.web_urls[name].rsplit(":", 1)[1])
        self.web_urls[name] = f"http://{host}:{web_port}"
        # The coordinator's options take the last value given.
        return self.netns.wrap(argv + ["--grpc", f"{host}:{self.grpc_ports[name]}", "--web", f"{host}:{web_port}",
                                       "--advertise", host])

    def stop(self) -> None:
        try:
            if self.netns.is_cut:
                self.netns.heal()   # so that p1 can end its streams and leases as usual
            super().stop()
        finally:
            self.netns.close()
