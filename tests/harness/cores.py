"""Fixed core sources for a JobServer (cli/job_server.py) in tests that run no leader:
the two verbs of cli.core_client.CoreSource, answered without etcd or a coordinator."""
from __future__ import annotations

from cli.core_client import CoreSource
from cluster.protocol import compile_pb2 as pb


class LocalCores(CoreSource):
    """No helper core: every job is answered "compile it locally"."""

    def acquire_core(self, wait=None):
        return None, -1, "no helper in this test"

    def release(self, grant, slot=-1):
        raise AssertionError("no grant was given")


class OneGrant(CoreSource):
    """One grant of the helper at `helper` (host:port), lent to every job at slot 0."""

    def __init__(self, helper: str, *, agent: str = "a1", grant: str = "g1", epoch: int = 5, slots: int = 4):
        self.grant = pb.Grant(agent=agent, helper=helper, slots=slots, grant=grant, epoch=epoch)
        self.helpers_used: set[str] = set()

    def acquire_core(self, wait=None):
        return self.grant, 0, ""

    def release(self, grant, slot=-1):
        pass
