"""Unit tests of the routing plug-in's durable forwarding state (``forward_state``, stdlib only)."""

from __future__ import annotations

import pytest

from dicom_node.orthanc_plugin import forward_state as fs

B = fs.Backoff(1.0, 8.0)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [B.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert B.delay(10_000) == 8.0
    with pytest.raises(ValueError, match="first_s"):
        fs.Backoff(5.0, 1.0)


def test_state_round_trips_through_json() -> None:
    s = fs.ForwardState(checkpoint=42)
    s.schedule("st1", 10.0, 10.0)
    s.job_submitted("st1", "job-1", ["i1", "i2"], 11.0)
    s.schedule("st2", 20.0, 12.0)
    s.node_down(13.0, B)
    s.set_aside["st3"] = {"since": 1.0, "at": 2.0, "attempts": 6, "error": "refused"}
    back = fs.ForwardState.from_json(s.to_json())
    assert back == s
    assert fs.ForwardState.from_json("") == fs.ForwardState()
    with pytest.raises(ValueError, match="not valid|version"):
        fs.ForwardState.from_json('{"version": 99}')
    with pytest.raises(ValueError, match="not valid"):
        fs.ForwardState.from_json("{")


def test_node_outage_never_gives_up_and_resumes_everything_when_the_node_answers() -> None:
    s = fs.ForwardState(checkpoint=0)
    s.schedule("a", 0.0, 0.0)
    s.job_submitted("a", "j1", ["i1"], 0.0)
    s.schedule("b", 0.5, 0.5)
    assert s.job_failed("a", "connection refused", node_reachable=False, now=1.0, backoff=B, max_attempts=2) is False
    assert s.summary(1.0)["NodeReachable"] is False
    assert s.due_studies(1.0) == ["a", "b"]  # looked at (a study with nothing to send is done) ...
    s.hold("a", 1.0)
    s.hold("b", 1.0)
    assert s.due_studies(1000.0) == []  # ... but what has something to send waits for the node
    # hours of failed probes: the studies stay, no attempt is counted
    t = 1.0
    for _ in range(5000):
        t += 10
        s.node_down(t, B)
    assert set(s.waiting) == {"a", "b"} and s.waiting["a"].attempts == 0
    assert s.probe_due - t == 8.0  # capped backoff
    assert not s.probe_is_due(t) and s.probe_is_due(t + 8.0)
    assert s.node_up(t + 8.0) == pytest.approx(t + 7.0)
    assert s.due_studies(t + 8.0) == ["a", "b"]  # oldest first


def test_failures_on_a_reachable_node_back_off_then_set_the_study_aside() -> None:
    s = fs.ForwardState(checkpoint=0)
    s.schedule("a", 0.0, 0.0)
    for n in range(1, 3):
        s.job_submitted("a", f"j{n}", ["i1"], 0.0)
        assert not s.job_failed("a", "0xC000", node_reachable=True, now=100.0, backoff=B, max_attempts=3)
        assert s.waiting["a"].due == 100.0 + B.delay(n)
    s.job_submitted("a", "j3", ["i1"], 0.0)
    assert s.job_failed("a", "0xC000", node_reachable=True, now=200.0, backoff=B, max_attempts=3)
    assert "a" not in s.waiting and s.set_aside["a"]["attempts"] == 3
    s.schedule("a", 300.0, 300.0)  # seen again (analyze route, new instance): it gets another chance
    assert "a" in s.waiting and "a" not in s.set_aside


def test_a_study_seen_again_while_its_job_runs_is_looked_at_again() -> None:
    s = fs.ForwardState(checkpoint=0)
    s.schedule("a", 0.0, 0.0)
    s.job_submitted("a", "j1", ["i1"], 0.0)
    assert s.in_flight() == {"i1"}
    s.schedule("a", 5.0, 1.0)  # a new instance arrives meanwhile
    s.job_succeeded("a", 2.0)
    assert s.waiting["a"].job is None and s.due_studies(2.0) == ["a"] and s.in_flight() == set()
    s.nothing_to_send("a")
    assert s.waiting == {}


def test_new_instances_push_a_study_back_until_it_is_stable() -> None:
    s = fs.ForwardState(checkpoint=0)
    s.schedule("a", 13.0, 10.0)  # NewInstance: due after StableAge
    s.schedule("a", 15.0, 12.0)  # another one
    assert s.due_studies(14.0) == [] and s.due_studies(15.0) == ["a"]
    s.schedule("a", 16.0, 16.0)  # StableStudy: due now
    assert s.due_studies(16.0) == ["a"]


def test_lost_job_is_sent_again_and_alerts_are_rate_limited() -> None:
    s = fs.ForwardState(checkpoint=0)
    s.schedule("a", 0.0, 0.0)
    s.job_submitted("a", "j1", ["i1"], 0.0)
    s.job_lost("a", 5.0)
    assert s.due_studies(5.0) == ["a"]
    assert s.alert_due(100.0, 600.0) == []
    assert s.alert_due(600.0, 600.0) == ["a"]
    assert s.alert_due(900.0, 600.0) == []  # at most once per period
    assert s.alert_due(1200.0, 600.0) == ["a"]
    summary = s.summary(1200.0)
    assert summary["WaitingStudies"] == 1 and summary["OldestWaitingSeconds"] == 1200.0


def test_finished_jobs_keep_the_latest_outcomes() -> None:
    """What Orthanc announced (JOB_SUCCESS / JOB_FAILURE) outlives its own job history, up to a bound."""
    done = fs.FinishedJobs(limit=3)
    assert done.outcome("j1") is None
    for i, state in enumerate(["Success", "Failure", "Success", "Success"], start=1):
        done.record(f"j{i}", state)
    assert len(done) == 3 and done.outcome("j1") is None  # the oldest went
    assert [done.outcome(f"j{i}") for i in (2, 3, 4)] == ["Failure", "Success", "Success"]
    done.record("j2", "Success")  # recorded again: the latest outcome, and the newest entry
    done.record("j5", "Success")
    assert done.outcome("j2") == "Success" and done.outcome("j3") is None


@pytest.mark.parametrize(
    ("kwargs", "needle"), [({"limit": 0}, "limit >= 1, got 0"), ({"limit": True}, "got True")]
)
def test_finished_jobs_limit_is_checked(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        fs.FinishedJobs(**kwargs)


def test_finished_jobs_refuse_other_states_and_empty_ids() -> None:
    done = fs.FinishedJobs()
    with pytest.raises(ValueError, match="'Running'"):
        done.record("j1", "Running")
    with pytest.raises(ValueError, match="needs an id, got ''"):
        done.record("", "Success")
