"""agent.job_root.inside: every path a job names maps under its root, or is refused."""
from __future__ import annotations

import os

import pytest

from agent.job_root import JobRefused, inside

ROOT = "/var/lib/baton/.compile/jobs/baton-job-x/root"


@pytest.mark.parametrize("path", ["/usr/include/stdio.h", "/w/src/a.c", "/a/b.", "/a/.b", "/a/./b", "/a//b", "/a/b/",
                                  "//a/b", "/", "/a/b/../c", "/a/b/..", "/..", "/../etc/passwd", "/a/../../etc/passwd",
                                  "/a/...", "/.hidden/x"])
def test_inside_is_root_plus_the_normal_path_or_refused(path):
    expected = os.path.normpath(ROOT + os.path.normpath(path))
    if expected != ROOT and not expected.startswith(ROOT + "/"):
        with pytest.raises(JobRefused):
            inside(ROOT, path)
    else:
        assert inside(ROOT, path) == expected


@pytest.mark.parametrize("path", ["a/b.h", "", "./a"])
def test_a_relative_path_is_refused(path):
    with pytest.raises(JobRefused):
        inside(ROOT, path)
