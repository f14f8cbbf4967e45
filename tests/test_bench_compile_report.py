"""bench/compile.py's figure of Baton against distcc: a round's builds with helpers together
over that round's distcc build, and their spread over the rounds (pure arithmetic)."""
from __future__ import annotations

import math

import pytest

from bench.compile import DISTCC, WARM, against_distcc, report_builds


def run(ratio: float) -> dict:
    return {"wall": 10 * ratio, "cpu": 18 * ratio, "steal": 0.0, "ratio": ratio, "cpu_ratio": ratio}


def test_the_geometric_mean_and_two_standard_errors_of_the_rounds():
    figure = against_distcc([0.9, 1.0, 1.1])
    logs = [math.log(0.9), 0.0, math.log(1.1)]
    mean = sum(logs) / 3
    error = 2 * math.sqrt(sum((x - mean) ** 2 for x in logs) / 2) / math.sqrt(3)
    assert figure["geomean"] == pytest.approx(math.exp(mean))
    assert figure["low"] == pytest.approx(math.exp(mean - error))
    assert figure["high"] == pytest.approx(math.exp(mean + error))
    assert (figure["rounds"], figure["at_or_below"]) == (3, 2)


def test_one_round_has_no_spread():
    figure = against_distcc([1.04])
    assert figure["low"] is None and figure["high"] is None
    assert (figure["geomean"], figure["at_or_below"]) == (pytest.approx(1.04), 0)


def test_only_the_builds_named_by_include_lines_count_against_distcc(capsys):
    first, scanned = "baton run, 2 one-core helpers [native]", "baton run, 2 helpers, scanned, cold [native]"
    measured = {"local": [run(1.0), run(1.0)],
                first: [run(1.1), run(1.2)],
                f"{WARM} [native]": [run(1.2), run(1.0)],
                scanned: [run(1.6), run(1.5)],   # slower by far: would lift the figure if it counted
                DISTCC: [run(1.25), run(1.1)]}
    out = report_builds(measured, {}, with_distcc=True)
    figure = out[-1]
    assert figure["name"] == "baton [native] / distcc"
    assert figure["builds"] == [first, f"{WARM} [native]"]
    assert figure["per_round"] == pytest.approx([1.15 / 1.25, 1.1 / 1.1])
    assert figure["at_or_below"] == 2
    assert figure["geomean"] == pytest.approx(math.sqrt(1.15 / 1.25))
    printed = capsys.readouterr().out
    assert "Baton [native] / distcc, a round's 2 builds with helpers together: geometric mean x0.959 " \
           "over 2 rounds" in printed


def test_without_distcc_there_is_no_figure(capsys):
    measured = {"local": [run(1.0)], "baton run, 2 one-core helpers [python]": [run(1.2)]}
    out = report_builds(measured, {}, with_distcc=False)
    assert [entry["name"] for entry in out] == ["local", "baton run, 2 one-core helpers [python]"]
    assert "distcc: not installed, not measured" in capsys.readouterr().out
