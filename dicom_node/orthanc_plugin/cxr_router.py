"""Orthanc Python plug-in: route stable chest X-ray studies to the cxr-ai-node, durably.

Loaded by Orthanc (``"PythonScript"`` in the Orthanc configuration; the script's folder is on
``sys.path``, so the sibling modules :mod:`routing_rules` and :mod:`forward_state` are importable).

Behaviour:

* the plug-in reads Orthanc's change log (``/changes``) from a persisted checkpoint: a
  ``StableStudy`` change makes the study due now, a ``NewInstance`` change makes its study due
  ``StableAge`` seconds later (this catches studies that arrived just before an Orthanc restart and
  never became stable in the old process). ``STABLE_STUDY`` callbacks only wake the worker up;
* a due study's instances that pass the CXR filter of :class:`routing_rules.RoutingRules` and do not
  carry the ``CxrAiForwarded`` metadata are sent to the node's modality with an asynchronous Orthanc
  C-STORE job; when the job succeeds they get the mark, so results coming back (which make the
  study stable again) cause no loop and nothing is sent twice;
* when a job fails, the node is asked for a C-ECHO. If it does not answer, the node is down:
  nothing more is submitted, the waiting studies are kept, and one C-ECHO probe is sent with
  exponential backoff (``RetryDelaySeconds`` doubling up to ``MaxRetryDelaySeconds``); when the
  node answers again every waiting study is sent. A node outage never makes the plug-in give up.
  A job that fails while the node answers is retried with the same backoff, and after
  ``MaxRetries`` such failures the study is set aside (ERROR line; the analyze route resends it);
* all of this state (checkpoint, waiting studies with their running job, node down since, set-aside
  studies) is stored in an Orthanc global property after every change (:data:`STATE_PROPERTY`), so
  an Orthanc restart loses nothing: a job Orthanc restored is followed, one it forgot is resubmitted;
* studies waiting longer than ``AlertAfterSeconds`` are reported with an ERROR line starting
  ``cxr-ai router: ALERT`` (at most once per period); ``GET /cxr-ai/status`` and the Prometheus
  text at ``GET /cxr-ai/metrics`` give the figures (``WaitingStudies``, ``OldestWaitingSeconds``,
  ``NodeReachable`` ...);
* ``POST /cxr-ai/studies/{id}/analyze`` sends one study on demand (ignores the ``CxrAiForwarded``
  mark, still applies the filter) and answers which instances were sent and which skipped;
* Orthanc Explorer gets an "Analyze with cxr-ai-node" button on the study page (the analyze route).

Log lines carry Orthanc resource ids and reasons, never patient names or ids.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import forward_state as fs  # sibling module (the script folder is on sys.path inside Orthanc)
import orthanc  # type: ignore[import-not-found]  # provided by Orthanc's embedded interpreter
import routing_rules as rr  # sibling module

_LOG_PREFIX = "cxr-ai router: "
#: Orthanc global property holding :class:`forward_state.ForwardState` (plug-ins use ids >= 1024).
STATE_PROPERTY = 4711
#: Pages of ``/changes`` read per cycle (200 changes each): bounded work per cycle.
_MAX_CHANGE_PAGES = 25


def _info(msg: str) -> None:
    orthanc.LogWarning(_LOG_PREFIX + msg) if _VERBOSE else orthanc.LogInfo(_LOG_PREFIX + msg)


def _warn(msg: str) -> None:
    orthanc.LogWarning(_LOG_PREFIX + msg)


def _error(msg: str) -> None:
    orthanc.LogError(_LOG_PREFIX + msg)


def _get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _clip(text: object, limit: int = 200) -> str:
    s = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Router:
    """The worker thread and the forwarding state it keeps in Orthanc (see the module docstring)."""

    def __init__(self, config: rr.PluginConfig, stable_age_s: float) -> None:
        self.config = config
        self.stable_age_s = float(stable_age_s)
        self.backoff = fs.Backoff(config.retry_delay_s, config.max_retry_delay_s)
        self.state = fs.ForwardState()
        self.finished = fs.FinishedJobs()  # outcomes announced by Orthanc, for jobs its history dropped
        self._saved = ""
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cxr-ai-router", daemon=True)
        self.counters = {"studies_seen": 0, "instances_forwarded": 0, "instances_skipped": 0,
                         "jobs_failed": 0, "jobs_succeeded": 0, "jobs_resubmitted_after_restart": 0,
                         "echo_probes_failed": 0, "studies_set_aside": 0, "alerts": 0,
                         "jobs_outcome_from_changes": 0}  # fmt: skip

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the persisted state (a fresh install starts at the current end of the change log)."""
        with self._lock:
            try:
                self.state = fs.ForwardState.from_json(orthanc.GetGlobalProperty(STATE_PROPERTY, ""))
            except ValueError as exc:
                _error(f"stored forwarding state unreadable ({exc}); starting afresh at the end of the change log")
                self.state = fs.ForwardState()
            if self.state.checkpoint is None:
                self.state.checkpoint = int(_get_json("/changes?last").get("Last", 0))
            self._saved = ""
            self._save()
            s = self.state.summary(time.time())
        _warn(f"forwarding state loaded: {s['WaitingStudies']} study(ies) waiting, {s['PendingJobs']} job(s) "
              f"running, node reachable: {s['NodeReachable']}, change log checkpoint {s['Checkpoint']}")  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            self._save()

    def wake(self) -> None:
        self._wake.set()

    def job_finished(self, job_id: str, state: str) -> None:
        """Orthanc announced that ``job_id`` ended in ``state`` (``Success`` / ``Failure``)."""
        with self._lock:
            self.finished.record(job_id, state)

    # -- the work -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self.config.poll_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.cycle()
            except Exception as exc:  # keep the worker alive whatever one study does
                _error(f"worker error: {type(exc).__name__}: {_clip(exc)}")

    def cycle(self) -> None:
        """One pass: read new changes, follow jobs, probe a down node, route due studies, alert, persist."""
        with self._lock:
            try:
                now = time.time()
                self._read_changes(now)
                self._poll_jobs(now)
                self._probe(now)
                for study_id in self.state.due_studies(time.time()):
                    self._route_waiting(study_id)
                self._alert(time.time())
            finally:
                self._save()

    def _save(self) -> None:
        text = self.state.to_json()
        if text != self._saved:
            orthanc.SetGlobalProperty(STATE_PROPERTY, text)
            self._saved = text

    def _read_changes(self, now: float) -> None:
        for _ in range(_MAX_CHANGE_PAGES):
            answer = _get_json(f"/changes?since={self.state.checkpoint or 0}&limit=200")
            for change in answer.get("Changes", []):
                if self.config.auto_forward:
                    self._on_logged_change(change, now)
                self.state.checkpoint = max(self.state.checkpoint or 0, int(change["Seq"]))
            if answer.get("Done", True):
                return

    def _on_logged_change(self, change: dict[str, Any], now: float) -> None:
        kind = change.get("ChangeType")
        if kind == "StableStudy":
            self.state.schedule(str(change["ID"]), now, now)
        elif kind == "NewInstance":
            try:
                study_id = str(_get_json(f"/instances/{change['ID']}/study")["ID"])
            except Exception:  # deleted meanwhile
                return
            self.state.schedule(study_id, now + self.stable_age_s, now)

    def _instances_with_tags(self, study_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for inst in _get_json(f"/studies/{study_id}/instances"):
            out.append((inst["ID"], _get_json(f"/instances/{inst['ID']}/simplified-tags")))
        return out

    @staticmethod
    def _forwarded_marks(instance_ids: list[str]) -> set[str]:
        done = set()
        for iid in instance_ids:
            if rr.FORWARDED_METADATA in _get_json(f"/instances/{iid}/metadata"):
                done.add(iid)
        return done

    def _route_waiting(self, study_id: str) -> None:
        try:
            info = _get_json(f"/studies/{study_id}")
        except Exception:  # deleted meanwhile
            self.state.nothing_to_send(study_id)
            return
        if not info.get("IsStable", True):  # more instances may come: Orthanc announces StableStudy
            self.state.postpone(study_id, time.time() + self.stable_age_s)
            return
        self.route_study(study_id, force=False)

    def route_study(self, study_id: str, *, force: bool) -> dict[str, Any]:
        """Select and send the CXR instances of one study; returns a summary (no patient data)."""
        with self._lock:
            running = self.state.waiting.get(study_id)
            if running is not None and running.job is not None:  # look again when its job ends
                running.again = True
                return {"StudyID": study_id, "Forwarded": [], "Skipped": [], "Job": running.job,
                        "NodeModality": self.config.node_modality}  # fmt: skip
            instances = self._instances_with_tags(study_id)
            in_flight = self.state.in_flight()
            marks = set() if force else self._forwarded_marks([i for i, _ in instances])
            selection = rr.select_instances(instances, self.config.rules, already_forwarded=marks | in_flight)
            self._count("studies_seen", 1)
            self._count("instances_skipped", len(selection.skipped))
            for iid, reason in selection.skipped:
                _info(f"study {study_id}: instance {iid} not forwarded: {reason}")
            job_id = None
            if selection.forward and not force and self.state.node_down_since is not None:
                self.state.hold(study_id, time.time())  # sent when the node answers again
            elif selection.forward:
                job_id = self._submit(study_id, list(selection.forward))
            elif study_id in self.state.waiting and self.state.waiting[study_id].job is None:
                self.state.nothing_to_send(study_id)
            self._save()
        return {
            "StudyID": study_id,
            "Forwarded": list(selection.forward),
            "Skipped": [{"ID": i, "Reason": r} for i, r in selection.skipped],
            "Job": job_id,
            "NodeModality": self.config.node_modality,
        }

    def _submit(self, study_id: str, instance_ids: list[str]) -> str:
        body = rr.store_request(instance_ids, self.config)
        answer = json.loads(orthanc.RestApiPost(f"/modalities/{self.config.node_modality}/store", json.dumps(body)))
        job_id = str(answer["ID"])
        now = time.time()
        self.state.schedule(study_id, now, now)  # (the analyze route may send a study nobody waited for)
        self.state.job_submitted(study_id, job_id, instance_ids, now)
        self._count("instances_forwarded", len(instance_ids))
        entry = self.state.waiting[study_id]
        _warn(f"study {study_id}: {len(instance_ids)} instance(s) sent to {self.config.node_modality!r} "
              f"(job {job_id}, failed jobs before: {entry.failures})")  # fmt: skip
        return job_id

    def _echo(self) -> bool:
        """Does the node answer C-ECHO (bounded by Orthanc's timeout)?"""
        try:
            orthanc.RestApiPost(f"/modalities/{self.config.node_modality}/echo", json.dumps({"Timeout": 10}))
            return True
        except Exception:
            return False

    def _poll_jobs(self, now: float) -> None:
        reachable: bool | None = None
        for study_id, entry in list(self.state.waiting.items()):
            if entry.job is None:
                continue
            job_id = entry.job
            try:
                job = _get_json(f"/jobs/{job_id}")
            except Exception:  # no longer in Orthanc's job history (JobsHistorySize) or lost in a restart
                outcome = self.finished.outcome(job_id)
                if outcome is None:  # never announced as finished: lost in a restart, send again
                    _warn(f"study {study_id}: job {job_id} is unknown to Orthanc (restart?); sending the study again")
                    self._count("jobs_resubmitted_after_restart")
                    self.state.job_lost(study_id, now)
                    continue
                self._count("jobs_outcome_from_changes")
                job = {"State": outcome}
                if outcome == "Failure":
                    job["ErrorDescription"] = "job failed (Orthanc no longer keeps its details: JobsHistorySize)"
            state = job.get("State")
            if state == "Success":
                for iid in entry.instances:
                    try:
                        orthanc.RestApiPut(f"/instances/{iid}/metadata/{rr.FORWARDED_METADATA}", job_id)
                    except Exception as exc:  # instance deleted meanwhile
                        _warn(f"cannot mark instance {iid} as forwarded: {_clip(exc)}")
                self._count("jobs_succeeded")
                self.state.job_succeeded(study_id, now)
                self._save()  # the marks are set: never resend these instances
            elif state == "Failure":
                self._count("jobs_failed")
                error = _clip(f"{job.get('ErrorDescription', '')} {job.get('ErrorDetails', '')}".strip())
                if reachable is None:
                    reachable = self._echo()
                was_up = self.state.node_down_since is None
                set_aside = self.state.job_failed(study_id, error, node_reachable=reachable, now=now,
                                                  backoff=self.backoff, max_attempts=self.config.max_retries + 1)  # fmt: skip
                if not reachable:
                    if was_up:
                        _error(f"node {self.config.node_modality!r} does not answer C-ECHO; forwarding paused, "
                               f"{len(self.state.waiting)} study(ies) waiting; probing with backoff "
                               f"(job {job_id} of study {study_id} failed: {error})")  # fmt: skip
                    else:
                        _warn(f"study {study_id}: job {job_id} failed, node down; the study waits ({error})")
                elif set_aside:
                    self._count("studies_set_aside")
                    _error(f"study {study_id}: job {job_id} failed {self.config.max_retries + 1} times while the "
                           f"node answered C-ECHO; study set aside (POST /cxr-ai/studies/{study_id}/analyze "
                           f"sends it again): {error}")  # fmt: skip
                else:
                    w = self.state.waiting[study_id]
                    _warn(f"study {study_id}: job {job_id} failed (attempt {w.attempts}, node reachable); "
                          f"retry in {self.backoff.delay(w.attempts):.0f} s: {error}")  # fmt: skip

    def _probe(self, now: float) -> None:
        if not self.state.probe_is_due(now):
            return
        if self._echo():
            outage = self.state.node_up(now)
            _warn(f"node {self.config.node_modality!r} answers C-ECHO again after {outage or 0:.0f} s; "
                  f"sending {len(self.state.waiting)} waiting study(ies)")  # fmt: skip
        else:
            self._count("echo_probes_failed")
            self.state.node_down(now, self.backoff)

    def _alert(self, now: float) -> None:
        late = self.state.alert_due(now, self.config.alert_after_s)
        if not late:
            return
        self._count("alerts")
        s = self.state.summary(now)
        errors = {self.state.waiting[x].last_error for x in late if self.state.waiting[x].last_error}
        _error(f"ALERT {len(late)} study(ies) waiting more than {self.config.alert_after_s:.0f} s for the node "
               f"{self.config.node_modality!r} (oldest {s['OldestWaitingSeconds']:.0f} s, {s['WaitingStudies']} "
               f"waiting in all; node reachable: {s['NodeReachable']}, down for {s['NodeDownSeconds']:.0f} s); "
               f"last error: {_clip(sorted(errors)[0]) if errors else 'none'}; studies: {', '.join(late[:5])}"
               + (" ..." if len(late) > 5 else ""))  # fmt: skip

    def status(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
            summary = self.state.summary(time.time())
            set_aside = [{"ID": k, "Attempts": v.get("attempts"), "Error": v.get("error")}
                         for k, v in list(self.state.set_aside.items())[-20:]]  # fmt: skip
        rules = self.config.rules
        return {
            "NodeModality": self.config.node_modality,
            "AutoForward": self.config.auto_forward,
            "Modalities": sorted(rules.modalities),
            "BodyParts": sorted(rules.body_parts),
            "ViewPositions": sorted(rules.view_positions),
            **summary,
            "AlertAfterSeconds": self.config.alert_after_s,
            "SetAside": set_aside,
            "Counters": counters,
        }


def metrics_text(status: dict[str, Any]) -> str:
    """Prometheus text exposition of the status figures (``GET /cxr-ai/metrics``)."""
    gauges = [
        ("cxr_ai_router_waiting_studies", "studies with CXR instances not yet forwarded to the node",
         status["WaitingStudies"]),
        ("cxr_ai_router_oldest_waiting_seconds", "age of the oldest waiting study", status["OldestWaitingSeconds"]),
        ("cxr_ai_router_node_reachable", "1 if the node answered its last C-ECHO / job", int(status["NodeReachable"])),
        ("cxr_ai_router_node_down_seconds", "how long the node has been unreachable", status["NodeDownSeconds"]),
        ("cxr_ai_router_set_aside_studies", "studies given up while the node was reachable",
         status["SetAsideStudies"]),
    ]  # fmt: skip
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
    for name, value in sorted(status["Counters"].items()):
        metric = f"cxr_ai_router_{name}_total"
        lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


# -- wiring into Orthanc ---------------------------------------------------------------------------
_CONFIGURATION = json.loads(orthanc.GetConfiguration())
_ROUTER = Router(rr.PluginConfig.from_orthanc_configuration(_CONFIGURATION),
                 stable_age_s=float(_CONFIGURATION.get("StableAge", 60)))  # fmt: skip
_VERBOSE = _ROUTER.config.verbose
# Orthanc announces the end of every job (SDK 1.7+); an older one leaves the record empty (polling only)
_JOB_SUCCESS = getattr(orthanc.ChangeType, "JOB_SUCCESS", object())
_JOB_FAILURE = getattr(orthanc.ChangeType, "JOB_FAILURE", object())


def on_change(change_type: int, level: int, resource_id: str) -> None:
    """Orthanc change callback: start/stop the worker; wake it up when a study becomes stable."""
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _ROUTER.start()
        _warn(f"started; node modality {_ROUTER.config.node_modality!r}, auto-forward {_ROUTER.config.auto_forward}")
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _ROUTER.stop()
    elif change_type == orthanc.ChangeType.STABLE_STUDY and _ROUTER.config.auto_forward:
        _ROUTER.wake()  # the change log has it; read it now rather than at the next poll
    elif change_type == _JOB_SUCCESS:
        _ROUTER.job_finished(resource_id, "Success")
    elif change_type == _JOB_FAILURE:
        _ROUTER.job_finished(resource_id, "Failure")


def on_analyze(output: Any, uri: str, **request: Any) -> None:
    """``POST /cxr-ai/studies/{id}/analyze``: send one study to the node now."""
    if request.get("method") != "POST":
        output.SendMethodNotAllowed("POST")
        return
    study_id = request["groups"][0]
    try:
        orthanc.RestApiGet(f"/studies/{study_id}")
    except Exception:
        output.SendHttpStatus(404, json.dumps({"Error": f"unknown study {study_id}"}))
        return
    summary = _ROUTER.route_study(study_id, force=True)
    output.AnswerBuffer(json.dumps(summary, indent=2), "application/json")


def on_status(output: Any, uri: str, **request: Any) -> None:
    """``GET /cxr-ai/status``: configuration, forwarding state and counters."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(json.dumps(_ROUTER.status(), indent=2), "application/json")


def on_metrics(output: Any, uri: str, **request: Any) -> None:
    """``GET /cxr-ai/metrics``: the status figures as Prometheus text."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(metrics_text(_ROUTER.status()), "text/plain; version=0.0.4")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback(rr.ANALYZE_ROUTE, on_analyze)
orthanc.RegisterRestCallback(rr.STATUS_ROUTE, on_status)
orthanc.RegisterRestCallback(rr.METRICS_ROUTE, on_metrics)
if hasattr(orthanc, "ExtendOrthancExplorer"):  # a button on Orthanc Explorer's study page
    orthanc.ExtendOrthancExplorer(rr.EXPLORER_JS)
