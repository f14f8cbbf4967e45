"""The build monitor of a `baton run` build in a real browser (issue 14 item 7).

A real cluster (etcd, primary p1, backup b1, two agents of one core serving
compile jobs), a real `baton run -- make -j4` of a C project, Chromium on the
backup's UI (reads work on every coordinator, and it outlives the primary):
the monitor shows the initiator's lane and the helper cores' lanes, its bars
grow while the build runs without a reload, the primary is SIGKILLed mid-build
and the failover appears as a mark, and the build ends done with one bar per
recorded job, the bars of each helper core's lane never overlapping (each is
the time its job held the core). The screenshot goes to the test's tmp directory, and with
BATON_SCREENSHOTS=1 to docs/img/build-monitor.png (the README shows it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright import sync_api

from tests.e2e.test_browser import CHROMIUM, MS, browser, context, expect, login  # noqa: F401 - fixtures
from tests.e2e.test_run_remote import Build, job_records, project
from tests.harness.wait import wait_until

IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "build-monitor.png"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at {CHROMIUM}"),
    pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("make")), reason="needs gcc and make"),
]


def build_id_of(build: Build) -> str | None:
    """The id `baton run` printed when it started (stderr is a pipe: read what is there)."""
    for path in build.tmp.glob("baton-run-*"):
        return path.name.split("-")[2]
    return None


def test_the_monitor_shows_lanes_and_bars_live_and_marks_the_failover(make_cluster, context, tmp_path):
    cluster = make_cluster(agents=2, backups=1, cores=1)
    wait_until(lambda: all(r.helper for r in cluster.agent_records().values()), 30, message="helpers advertised")
    # Long enough that the build still runs when p1 is killed (the compile path got faster:
    # 40 sources once ended before the kill, and a build without a failover has no mark).
    src = project(tmp_path / "proj", sources=120, weight=200)
    build = Build(cluster, src, tmp_path)
    build_id = wait_until(lambda: build_id_of(build), 60, message="the run directory")
    wait_until(lambda: len(job_records(cluster, build_id)) >= 2, 120, message="jobs recorded")

    b1 = cluster.web_urls["b1"]
    page = context.new_page()
    login(page, b1, cluster.admin_password)
    page.goto(f"{b1}/builds/{build_id}")
    monitor = page.locator("#monitor")
    expect(page.locator("#run-build h2")).to_contain_text("make -j4")
    expect(monitor.locator(".lane-initiator")).to_have_count(1)
    expect(monitor.locator(".lane-initiator .lane-label")).to_contain_text("(initiator)")
    expect(monitor.locator('.lane[data-lane^="a"]').first).to_be_visible()   # a helper core's lane
    expect(monitor.locator(".job-remote").first).to_be_visible()
    first = monitor.locator(".job").count()
    # Live: more bars arrive without a reload (monitor.js polls the API).
    wait_until(lambda: monitor.locator(".job").count() > first, 120, message="new bars on the open page")

    assert build.proc.poll() is None, "the build ended before the failover: give it more to compile"
    cluster.coordinators["p1"].kill()
    expect(monitor.locator(".mark-failover")).to_have_count(1, timeout=60 * MS)
    expect(monitor.locator(".mark-failover")).to_contain_text("b1")

    figures, _ = build.finish()
    assert figures["exit_code"] == 0 and figures["recorded"]
    expect(page.locator("#build-state")).to_have_text("done", timeout=60 * MS)
    expect(monitor.locator(".job")).to_have_count(figures["jobs"])
    lanes = monitor.locator(".lane").evaluate_all("nodes => nodes.map(n => n.dataset.lane)")
    assert lanes[0] == "local" and set(lanes[1:]) <= {"a1/0", "a2/0"} and lanes[1:]
    for seq in (1, figures["jobs"]):   # each bar sits on its job's lane
        record = next(r for r in job_records(cluster, build_id) if r.seq == seq)
        lane = f"{record.helper}/{record.core}" if record.remote else "local"
        expect(monitor.locator(f'.lane[data-lane="{lane}"] .job[data-seq="{seq}"]')).to_have_count(1)
    # A core runs one job at a time, and its lane shows that: make -j4 on two cores makes jobs
    # wait for a core, and a bar spanning the job's whole life would overlap the core's others.
    for lane in lanes[1:]:
        bars = sorted(monitor.locator(f'.lane[data-lane="{lane}"] .job').evaluate_all(
            "nodes => nodes.map(n => { const r = n.getBoundingClientRect(); return [r.left, r.right]; })"))
        overlaps = [(a, b) for a, b in zip(bars, bars[1:]) if b[0] < a[1] - 1.0]   # 1 px: ms rounding
        assert len(bars) > 1 and not overlaps, (lane, overlaps[:3])
    shot = tmp_path / "build-monitor.png"
    card, end = page.locator("#run-build").bounding_box(), page.locator("#monitor-span").bounding_box()
    page.screenshot(path=str(shot), clip={"x": card["x"], "y": card["y"], "width": card["width"],
                                          "height": end["y"] + end["height"] + 8 - card["y"]})
    if os.environ.get("BATON_SCREENSHOTS") == "1":
        IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, IMAGE)
