"""The records of `baton run` builds, pure parts: the job record (cluster.records.JobRecord),
the initiator's reports (cli/run_report.py) and `baton build show` of a run build."""
from __future__ import annotations

import json

from cli.run_report import RunReport, job_report, run_summary
from cluster.protocol import compile_pb2 as pb
from cluster.records import JobRecord

REMOTE = {"source": "s1.c", "helper": "a1", "core": 1, "started": 10.0, "finished": 12.5, "duration": 2.5,
          "exit_code": 0, "compiler": "gcc"}
LOCAL = {"source": "s2.c", "helper": "local", "started": 11.0, "finished": 11.5, "duration": 0.5,
         "exit_code": 1, "compiler": "gcc", "why_local": "no free helper core within 2 s"}


def test_a_job_record_round_trips_with_its_duration():
    record = JobRecord.from_report(job_report(3, REMOTE), epoch=42, coordinator="p1")
    again = JobRecord.parse(record.to_json())
    assert again == record
    assert (again.seq, again.helper, again.core, again.remote, again.epoch, again.coordinator) == \
        (3, "a1", 1, True, 42, "p1")
    assert again.to_dict()["duration"] == 2.5 and not again.failed


def test_a_local_job_has_no_core_and_says_why():
    record = JobRecord.from_report(job_report(4, LOCAL), epoch=1, coordinator="p1")
    assert (record.helper, record.core, record.remote, record.failed) == ("local", None, False, True)
    assert record.why_local == "no free helper core within 2 s"


def test_a_remote_job_keeps_when_it_held_its_core():
    waited = dict(REMOTE, core_started=11.25, core_finished=12.4)
    record = JobRecord.parse(JobRecord.from_report(job_report(5, waited), epoch=1, coordinator="p1").to_json())
    assert (record.started, record.core_started, record.core_finished, record.finished) == (10.0, 11.25, 12.4, 12.5)
    assert record.to_dict()["core_started"] == 11.25 and record.duration == 2.5   # the job's, wait included


def test_core_times_are_unknown_when_not_sent_and_kept_within_the_job():
    assert JobRecord.from_report(job_report(6, REMOTE), 1, "p1").core_started is None   # an older initiator
    local = JobRecord.from_report(job_report(7, dict(LOCAL, core_started=11.1, core_finished=11.2)), 1, "p1")
    assert (local.core_started, local.core_finished) == (None, None)   # a local job held no helper core
    skewed = JobRecord.from_report(job_report(8, dict(REMOTE, core_started=9.0, core_finished=99.0)), 1, "p1")
    assert (skewed.core_started, skewed.core_finished) == (10.0, 12.5)
    backwards = JobRecord.from_report(job_report(9, dict(REMOTE, core_started=12.0, core_finished=11.0)), 1, "p1")
    assert (backwards.core_started, backwards.core_finished) == (12.0, 12.0)


def test_junk_is_no_job_and_reported_text_is_bounded(caplog):
    assert JobRecord.parse(b"[1]") is None and JobRecord.parse(b'{"seq": 1}') is None
    assert JobRecord.parse(json.dumps({"seq": "x", "helper": "a", "started": 1, "finished": 2,
                                       "exit_code": 0})) is None
    huge = pb.JobReport(seq=1, helper="a" * 500, source="s" * 100_000, started=5, finished=4, remote=True)
    record = JobRecord.from_report(huge, 1, "p1")
    assert len(record.source) <= 1024 and len(record.helper) <= 64 and record.duration == 0.0


def write_log(run_dir, *jobs, partial=b""):
    with open(run_dir / "jobs.jsonl", "ab") as f:
        for job in jobs:
            f.write((json.dumps(job) + "\n").encode())
        f.write(partial)


def test_reports_are_numbered_in_log_order_and_kept_until_acknowledged(tmp_path):
    report = RunReport("r1", ["make", "-j4"], str(tmp_path), host="h", started=5.0)
    assert report.poll() == []
    write_log(tmp_path, REMOTE, LOCAL, partial=b'{"source": "s3')
    assert [r.seq for r in report.poll()] == [1, 2]
    assert report.poll() == []   # the half-written line waits for its end
    with open(tmp_path / "jobs.jsonl", "ab") as f:
        f.write(b'.c", "helper": "local", "started": 1, "finished": 2, "exit_code": 0}\n')
    assert [(r.seq, r.source) for r in report.poll()] == [(3, "s3.c")]
    report.acknowledge(pb.CoreGrants(acked=[2]))
    first, = report.requests(cores=4)   # a new stream: the start and what is not acknowledged
    assert first.start.command == ["make", "-j4"] and first.start.host == "h" and first.cores == 4
    assert [j.seq for j in first.jobs] == [1, 3] and not first.HasField("end")


def test_the_end_goes_with_the_last_request_until_the_leader_records_it(tmp_path):
    report = RunReport("r1", ["make"], str(tmp_path))
    write_log(tmp_path, *[dict(REMOTE, source=f"s{i}.c") for i in range(450)])
    report.poll()
    report.finish(0, 3.0, {"jobs": 450, "remote": 450, "failed": 0})
    requests = report.requests(cores=0)
    assert [len(r.jobs) for r in requests] == [200, 200, 50]
    assert requests[0].HasField("start") and not requests[0].HasField("end") and requests[-1].end.jobs == 450
    report.acknowledge(pb.CoreGrants(ended=True))
    assert report.complete and report.unacknowledged == 0


def test_build_show_of_a_run_build_lists_where_each_job_ran():
    build = {"id": "r1", "kind": "run", "name": "make -j4", "state": "done", "host": "h", "exit_code": 0,
             "wall": 3.0, "reason": "", "counts": {"total": 2, "remote": 1, "local": 1, "failed": 1},
             "jobs": [dict(REMOTE, seq=1, remote=True), dict(LOCAL, seq=2, remote=False)]}
    text = run_summary(build)
    assert "r1 run: make -j4: done (exit 0, wall 3.0 s)" in text and "2 jobs, 1 remote, 1 local, 1 failed" in text
    assert "a1/1" in text and "no free helper core" in text
