"""Orthanc Python plug-in: route stable chest X-ray studies to the cxr-ai-node.

Loaded by Orthanc (``"PythonScript"`` in the Orthanc configuration; the script's folder is on
``sys.path``, so the sibling :mod:`routing_rules` is importable). Behaviour:

* on every ``STABLE_STUDY`` change (with ``AutoForward``), the study's instances that pass the CXR
  filter of :class:`routing_rules.RoutingRules` and were not forwarded before are sent to the node's
  modality with an asynchronous Orthanc C-STORE job;
* the node's own results (Manufacturer ``cxr-ai-node``, Modality SR, ...) are never forwarded, and an
  instance that reached the node is marked with the user metadata ``CxrAiForwarded``, so results
  coming back (which make the study stable again) cause no loop and no re-analysis;
* failed jobs (node down) are retried ``MaxRetries`` times, ``RetryDelaySeconds`` apart;
* ``POST /cxr-ai/studies/{id}/analyze`` sends one study on demand (ignores the ``CxrAiForwarded``
  mark, still applies the filter) and answers which instances were sent and which skipped;
* ``GET /cxr-ai/status`` answers the configuration and counters;
* Orthanc Explorer gets an "Analyze with cxr-ai-node" button on the study page (the analyze route).

Log lines carry Orthanc resource ids and reasons, never patient names or ids.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import orthanc  # type: ignore[import-not-found]  # provided by Orthanc's embedded interpreter
import routing_rules as rr  # sibling module (the script folder is on sys.path inside Orthanc)

_LOG_PREFIX = "cxr-ai router: "


def _info(msg: str) -> None:
    orthanc.LogWarning(_LOG_PREFIX + msg) if _VERBOSE else orthanc.LogInfo(_LOG_PREFIX + msg)


def _warn(msg: str) -> None:
    orthanc.LogWarning(_LOG_PREFIX + msg)


def _error(msg: str) -> None:
    orthanc.LogError(_LOG_PREFIX + msg)


def _get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


class Router:
    """Forwarding state: a queue of stable studies, a worker thread, and the pending C-STORE jobs."""

    def __init__(self, config: rr.PluginConfig) -> None:
        self.config = config
        self._studies: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        #: job id -> (instance ids, attempt number, study id)
        self._jobs: dict[str, tuple[list[str], int, str]] = {}
        #: (due time, instance ids, attempt number, study id) waiting for a retry
        self._retries: list[tuple[float, list[str], int, str]] = []
        self._in_flight: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cxr-ai-router", daemon=True)
        self.counters = {"studies_seen": 0, "instances_forwarded": 0, "instances_skipped": 0,
                         "jobs_failed": 0, "jobs_succeeded": 0}  # fmt: skip

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._studies.put(None)
        self._thread.join(timeout=10)

    def enqueue_study(self, study_id: str) -> None:
        self._studies.put(study_id)

    # -- the work -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                study_id = self._studies.get(timeout=self.config.poll_interval_s)
            except queue.Empty:
                study_id = None
            try:
                if study_id is not None:
                    self.route_study(study_id, force=False)
                self._poll_jobs()
                self._run_due_retries()
            except Exception as exc:  # keep the worker alive whatever one study does
                _error(f"worker error: {type(exc).__name__}: {exc}")

    def _instances_with_tags(self, study_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for inst in _get_json(f"/studies/{study_id}/instances"):
            out.append((inst["ID"], _get_json(f"/instances/{inst['ID']}/simplified-tags")))
        return out

    def _forwarded_marks(self, instance_ids: list[str]) -> set[str]:
        done = set()
        for iid in instance_ids:
            if rr.FORWARDED_METADATA in _get_json(f"/instances/{iid}/metadata"):
                done.add(iid)
        return done

    def route_study(self, study_id: str, *, force: bool) -> dict[str, Any]:
        """Select and send the CXR instances of one study; returns a summary (no patient data)."""
        instances = self._instances_with_tags(study_id)
        with self._lock:
            in_flight = set(self._in_flight)
        already = set() if force else self._forwarded_marks([i for i, _ in instances]) | in_flight
        selection = rr.select_instances(instances, self.config.rules, already_forwarded=already)
        self._count("studies_seen", 1)
        self._count("instances_skipped", len(selection.skipped))
        for iid, reason in selection.skipped:
            _info(f"study {study_id}: instance {iid} not forwarded: {reason}")
        job_id = None
        if selection.forward:
            job_id = self._submit(list(selection.forward), attempt=1, study_id=study_id)
        return {
            "StudyID": study_id,
            "Forwarded": list(selection.forward),
            "Skipped": [{"ID": i, "Reason": r} for i, r in selection.skipped],
            "Job": job_id,
            "NodeModality": self.config.node_modality,
        }

    def _submit(self, instance_ids: list[str], *, attempt: int, study_id: str) -> str:
        body = rr.store_request(instance_ids, self.config)
        answer = json.loads(orthanc.RestApiPost(f"/modalities/{self.config.node_modality}/store", json.dumps(body)))
        job_id = answer["ID"]
        with self._lock:
            self._jobs[job_id] = (instance_ids, attempt, study_id)
            self._in_flight.update(instance_ids)
        self._count("instances_forwarded", len(instance_ids))
        _warn(
            f"study {study_id}: {len(instance_ids)} instance(s) sent to {self.config.node_modality!r} "
            f"(job {job_id}, attempt {attempt})"
        )
        return job_id

    def _poll_jobs(self) -> None:
        with self._lock:
            jobs = dict(self._jobs)
        for job_id, (instance_ids, attempt, study_id) in jobs.items():
            try:
                state = _get_json(f"/jobs/{job_id}").get("State")
            except Exception:  # job forgotten by Orthanc (restart): give up on tracking it
                state = "Failure"
            if state == "Success":
                for iid in instance_ids:
                    try:
                        orthanc.RestApiPut(f"/instances/{iid}/metadata/{rr.FORWARDED_METADATA}", job_id)
                    except Exception as exc:  # instance deleted meanwhile
                        _warn(f"cannot mark instance {iid} as forwarded: {exc}")
                self._count("jobs_succeeded", 1)
                self._forget(job_id, instance_ids)
            elif state == "Failure":
                self._count("jobs_failed", 1)
                self._forget(job_id, instance_ids)
                if attempt <= self.config.max_retries:
                    _warn(f"study {study_id}: job {job_id} failed (attempt {attempt}); retry in "
                          f"{self.config.retry_delay_s} s")  # fmt: skip
                    with self._lock:
                        self._retries.append(
                            (time.monotonic() + self.config.retry_delay_s, instance_ids, attempt + 1, study_id)
                        )
                        self._in_flight.update(instance_ids)
                else:
                    _error(f"study {study_id}: job {job_id} failed {attempt} times; giving up")

    def _forget(self, job_id: str, instance_ids: list[str]) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._in_flight.difference_update(instance_ids)

    def _run_due_retries(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [r for r in self._retries if r[0] <= now]
            self._retries = [r for r in self._retries if r[0] > now]
            for _, ids, _, _ in due:
                self._in_flight.difference_update(ids)
        for _, ids, attempt, study_id in due:
            existing = [i for i in ids if self._exists(i)]
            if existing:
                self._submit(existing, attempt=attempt, study_id=study_id)

    @staticmethod
    def _exists(instance_id: str) -> bool:
        try:
            orthanc.RestApiGet(f"/instances/{instance_id}")
            return True
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._jobs)
            retries = len(self._retries)
            counters = dict(self.counters)
        rules = self.config.rules
        return {
            "NodeModality": self.config.node_modality,
            "AutoForward": self.config.auto_forward,
            "Modalities": sorted(rules.modalities),
            "BodyParts": sorted(rules.body_parts),
            "ViewPositions": sorted(rules.view_positions),
            "PendingJobs": pending,
            "PendingRetries": retries,
            "Counters": counters,
        }


# -- wiring into Orthanc ---------------------------------------------------------------------------
_CONFIGURATION = json.loads(orthanc.GetConfiguration())
_ROUTER = Router(rr.PluginConfig.from_orthanc_configuration(_CONFIGURATION))
_VERBOSE = _ROUTER.config.verbose


def on_change(change_type: int, level: int, resource_id: str) -> None:
    """Orthanc change callback: queue stable studies, start/stop the worker."""
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _ROUTER.start()
        _warn(f"started; node modality {_ROUTER.config.node_modality!r}, auto-forward {_ROUTER.config.auto_forward}")
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _ROUTER.stop()
    elif change_type == orthanc.ChangeType.STABLE_STUDY and _ROUTER.config.auto_forward:
        _ROUTER.enqueue_study(resource_id)


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
    """``GET /cxr-ai/status``: configuration and counters."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(json.dumps(_ROUTER.status(), indent=2), "application/json")


orthanc.RegisterOnChangeCallback(on_change)
orthanc.RegisterRestCallback(rr.ANALYZE_ROUTE, on_analyze)
orthanc.RegisterRestCallback(rr.STATUS_ROUTE, on_status)
if hasattr(orthanc, "ExtendOrthancExplorer"):  # a button on Orthanc Explorer's study page
    orthanc.ExtendOrthancExplorer(rr.EXPLORER_JS)
