"""agent.job_root.inside: every path a job names maps under its root, or is refused."""
from __future__ import annotations

import os

import pytest

from agent.job_root import JobRefused, from_cwd, inside

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


@pytest.mark.parametrize("cwd, path, spelt", [
    ("/w/p/build", "../include", "/w/p/build/../include"),
    ("/w/p/build", "../../../x.h", "/w/p/build/../../../x.h"),      # down to the root itself, and in
    ("/w", "sub/../../inc", "/w/sub/../../inc"),
    ("/w/./p//", "../src/a.c", "/w/p/../src/a.c"),                   # the working directory normalised
    ("/", "a/../b.h", "/a/../b.h"),
])
def test_a_relative_path_is_kept_as_spelt_while_it_stays_under_the_root(cwd, path, spelt):
    """The depth check: the working directory's parts, then the path's ('..' -1, '.' 0, others
    +1), never below 0 (agent.job_root.from_cwd)."""
    assert from_cwd(cwd, path) == spelt


@pytest.mark.parametrize("cwd, path", [
    ("/w/p/build", "../../../../etc"),
    ("/w/p/build", "../../../../../../../etc"),
    ("/w", "sub/../../../inc"),
    ("/", "../x.h"),
    ("/w/p/../..", "../etc"),                    # the working directory is / once normalised
    ("/w/p/build", "../../../../w/p/build/x.h"),  # above the root and back: refused too
])
def test_a_relative_path_that_climbs_above_the_root_is_refused(cwd, path):
    with pytest.raises(JobRefused):
        from_cwd(cwd, path)
