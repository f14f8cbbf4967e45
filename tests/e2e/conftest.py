"""End-to-end fixtures: whole clusters of real processes (cli.local.LocalCluster)."""
from __future__ import annotations

import shutil

import pytest

from cli.local import LocalCluster
from tests.harness.dirs import reachable_dir

_clusters_key = pytest.StashKey[list]()
_failed_key = pytest.StashKey[bool]()


@pytest.fixture
def tmp_path(request):
    """A directory build tasks can reach and write (tests/harness/dirs.py)."""
    path = reachable_dir(request.node.name)
    yield path
    if not request.node.stash.get(_failed_key, False):  # a failed test's logs stay for a look
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_cluster(request, tmp_path):
    """Start a LocalCluster (etcd, coordinators, agents as real processes); stopped after the test.
    On failure the tail of every process log is attached to the report."""
    clusters: list[LocalCluster] = []
    request.node.stash[_clusters_key] = clusters

    def make(cluster_class=LocalCluster, **kw) -> LocalCluster:
        """cluster_class: LocalCluster or a harness's subclass of it (tests/harness/netns.py)."""
        kw.setdefault("ttl", 2)
        kw.setdefault("tls", False)
        kw.setdefault("web", True)
        cluster = cluster_class(tmp_path / f"cluster{len(clusters)}", **kw)
        if kw.get("etcd_urls"):
            # A shared etcd holds other tests' history (and may be compacted by them):
            # the audit (tests/harness/audit.py) starts at this cluster's first revision.
            cluster.history_since = cluster.etcd().revision()
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash[_failed_key] = True
    if report.when == "call" and report.failed:
        for cluster in item.stash.get(_clusters_key, []):
            procs = [cluster.etcd_proc, *cluster.coordinators.values(), *cluster.agents.values()]
            for proc in procs:
                if proc is not None:
                    report.sections.append((f"log {proc.name}", proc.log_tail(40)))
