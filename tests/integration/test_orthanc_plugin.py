"""The routing plug-in inside a real Orthanc, with dcmtk ``storescp`` standing in for the node."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from integration_helpers import StoreSCP, make_image, write

from dicom_node.testing.local_orthanc import LocalOrthanc, storescu, wait_until

pytestmark = pytest.mark.integration


def _received_uids(scp: StoreSCP) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.received()}


def _push(orthanc: LocalOrthanc, files: list[Path]) -> None:
    res = storescu(files, orthanc.dicom_port)
    assert res.returncode == 0, f"storescu failed: {res.stdout}\n{res.stderr}"


def _wait_routed(orthanc: LocalOrthanc, studies: int, timeout: float = 30.0) -> dict:
    """Wait until the plug-in has looked at ``studies`` stable studies and has no job pending."""

    def done() -> dict | None:
        st = orthanc.router_status()
        ok = st["Counters"]["studies_seen"] >= studies and st["PendingJobs"] == 0 and st["PendingRetries"] == 0
        return st if ok else None

    return wait_until(done, timeout, what=f"the router to process {studies} stable studies")


def test_stable_cxr_study_is_forwarded_but_ct_and_lateral_are_not(
    orthanc: LocalOrthanc, fake_node: StoreSCP, tmp_path: Path
) -> None:
    study = pydicom.uid.generate_uid()
    cr = write(make_image("CR", study_uid=study, seed=1), tmp_path / "cr.dcm")
    dx_no_view = write(make_image("DX", study_uid=study, view_position=None, body_part=None, seed=2),
                       tmp_path / "dx.dcm")  # fmt: skip
    lateral = write(make_image("CR", study_uid=study, view_position="LL", seed=3), tmp_path / "lat.dcm")
    ct_study = pydicom.uid.generate_uid()
    ct = write(make_image("CT", study_uid=ct_study, body_part="CHEST", view_position=None, seed=4),
               tmp_path / "ct.dcm")  # fmt: skip
    _push(orthanc, [cr, dx_no_view, lateral, ct])

    st = _wait_routed(orthanc, studies=2)
    wait_until(lambda: len(fake_node.received()) >= 2, 20, what="two instances at the fake node")
    expected = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (cr, dx_no_view)}
    assert _received_uids(fake_node) == expected
    assert st["Counters"]["instances_forwarded"] == 2
    # forwarded instances are marked, the others are not
    for tags in orthanc.study_instances(study):
        meta = orthanc.get(f"/instances/{tags['_orthanc_id']}/metadata")
        assert ("CxrAiForwarded" in meta) == (tags["SOPInstanceUID"] in expected), tags["SOPInstanceUID"]


def test_results_coming_back_are_not_forwarded_and_nothing_is_sent_twice(
    orthanc: LocalOrthanc, fake_node: StoreSCP, tmp_path: Path
) -> None:
    study = pydicom.uid.generate_uid()
    cr = write(make_image("CR", study_uid=study, seed=5), tmp_path / "cr.dcm")
    _push(orthanc, [cr])
    _wait_routed(orthanc, studies=1)
    wait_until(lambda: len(fake_node.received()) == 1, 20, what="the CXR at the fake node")

    # what the node sends back: an SC overlay (CHEST, Manufacturer cxr-ai-node) and an SR-like object
    sc = make_image("CR", study_uid=study, manufacturer="cxr-ai-node", seed=6)
    sc.Modality = "OT"
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sr = make_image("CR", study_uid=study, manufacturer="someone-else", seed=7)
    sr.Modality = "SR"
    _push(orthanc, [write(sc, tmp_path / "sc.dcm"), write(sr, tmp_path / "sr.dcm")])

    # the study becomes stable again and is routed again ...
    st = _wait_routed(orthanc, studies=2)
    # ... but neither the results nor the already-forwarded CXR go out again
    assert len(fake_node.received()) == 1
    assert st["Counters"]["instances_forwarded"] == 1


def test_analyze_route_sends_one_study_on_demand(
    orthanc_factory, fake_node: StoreSCP, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory(auto_forward=False).start()
    study = pydicom.uid.generate_uid()
    cr = make_image("CR", study_uid=study, seed=8)
    ct = make_image("CT", study_uid=study, body_part="CHEST", view_position=None, seed=9)
    _push(orthanc, [write(cr, tmp_path / "cr.dcm"), write(ct, tmp_path / "ct.dcm")])
    sid = orthanc.study_id(study)
    assert sid is not None

    # auto-forward is off: nothing arrives on its own
    wait_until(lambda: orthanc.get(f"/studies/{sid}").get("IsStable"), 20, what="study to become stable")
    assert fake_node.received() == []

    answer = orthanc.post(f"/cxr-ai/studies/{sid}/analyze")
    assert answer["StudyID"] == sid and answer["NodeModality"] == "cxr-node"
    assert len(answer["Forwarded"]) == 1 and answer["Job"]
    assert [s["Reason"] for s in answer["Skipped"]] == ["Modality CT is not routed for analysis"]
    wait_until(lambda: len(fake_node.received()) == 1, 20, what="the CXR at the fake node")
    assert _received_uids(fake_node) == {str(cr.SOPInstanceUID)}

    # unknown study -> 404; wrong method -> 405; no credentials -> 401
    assert orthanc.request("POST", "/cxr-ai/studies/0000-unknown/analyze").status_code == 404
    assert orthanc.request("GET", f"/cxr-ai/studies/{sid}/analyze").status_code == 405
    import httpx

    assert httpx.post(f"{orthanc.base_url}/cxr-ai/studies/{sid}/analyze", timeout=10).status_code == 401


def test_node_down_job_is_retried(orthanc_factory, ports, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory(retry_delay_s=1.0).start()
    cr = make_image("CR", seed=10)
    _push(orthanc, [write(cr, tmp_path / "cr.dcm")])
    wait_until(lambda: orthanc.router_status()["Counters"]["jobs_failed"] >= 1, 40, what="a failed job (node down)")
    scp = StoreSCP(port=ports.node, outdir=tmp_path / "late-node" / "in").start()
    try:
        wait_until(lambda: len(scp.received()) == 1, 40, what="the retried CXR at the (late) node")
        assert _received_uids(scp) == {str(cr.SOPInstanceUID)}
    finally:
        scp.stop()


def test_shipped_config_runs_with_environment_variables(binaries, ports, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The file docker-compose mounts: only the integers and paths change here, strings come from the env."""
    import json
    import os
    import subprocess

    import httpx

    from dicom_node.orthanc.config import PLUGIN_SCRIPT, load_shipped_config
    from dicom_node.testing.local_orthanc import orthanc_binary

    cfg = load_shipped_config()
    cfg.update({"HttpPort": ports.http, "DicomPort": ports.dicom, "StorageDirectory": str(tmp_path / "db"),
                "IndexDirectory": str(tmp_path / "db"), "RemoteAccessAllowed": False})  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(cfg))
    env = dict(os.environ, ORTHANC_USER="envuser", ORTHANC_PASSWORD="envpass", CXR_NODE_HOST="192.0.2.10",
               CXR_MODALITY_AET="CR1", CXR_MODALITY_HOST="192.0.2.20",
               CXR_ORTHANC_PLUGIN_SCRIPT=str(PLUGIN_SCRIPT))  # fmt: skip
    log = open(tmp_path / "orthanc.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([orthanc_binary(), str(tmp_path / "orthanc.json")], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    base = f"http://127.0.0.1:{ports.http}"
    try:
        wait_until(lambda: httpx.get(f"{base}/system", auth=("envuser", "envpass"), timeout=5).status_code == 200,
                   30, what="Orthanc with the shipped configuration")  # fmt: skip
        assert httpx.get(f"{base}/system", auth=("envuser", "wrong"), timeout=5).status_code == 401
        node = httpx.get(f"{base}/modalities/cxr-node/configuration", auth=("envuser", "envpass"), timeout=5)
        assert node.status_code == 200, node.text
        assert node.json()["Host"] == "192.0.2.10" and node.json()["Port"] == 11112
        status = httpx.get(f"{base}/cxr-ai/status", auth=("envuser", "envpass"), timeout=5).json()
        assert status["NodeModality"] == "cxr-node" and status["AutoForward"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_orthanc_explorer_gets_the_analyze_button(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    """The plug-in extends Orthanc Explorer: the study page gets a button that POSTs the analyze route."""
    from dicom_node.orthanc_plugin import routing_rules as rules

    orthanc = orthanc_factory(auto_forward=False).start()
    # Orthanc Explorer loads the plug-ins' extensions from ../plugins/explorer.js (explorer.html)
    assert "../plugins/explorer.js" in orthanc.request("GET", "/app/explorer.html").text
    js = orthanc.request("GET", "/plugins/explorer.js")
    assert js.status_code == 200
    text = js.text
    assert rules.EXPLORER_BUTTON_LABEL in text
    assert "'../cxr-ai/studies/' + $.mobile.pageData.uuid + '/analyze'" in text
    # the URL the button builds is the route the plug-in serves
    assert rules.ANALYZE_ROUTE_RE.match("/cxr-ai/studies/" + "0123abcd-" * 4 + "0123abcd/analyze")


def test_forwarding_survives_a_node_outage_and_an_orthanc_restart(
    orthanc_factory, ports, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Issue 13 gap 1: the plug-in kept its retries in memory and gave up after MaxRetries x
    RetryDelaySeconds; an Orthanc restart forgot them. Now the state lives in Orthanc: a study waits
    for the node however long it is down, across a restart, and is sent exactly once afterwards."""
    # StableAge 3 s: study B is pushed and Orthanc stopped before B ever becomes stable
    orthanc = orthanc_factory(retry_delay_s=0.5, max_retry_delay_s=1.0, alert_after_s=3.0, stable_age_s=3).start()
    a = make_image("CR", seed=21)
    _push(orthanc, [write(a, tmp_path / "a.dcm")])
    wait_until(lambda: orthanc.router_status()["NodeReachable"] is False, 30, what="the node seen as down")
    # far longer than the old give-up time (MaxRetries 5 x RetryDelaySeconds 0.5 s)
    wait_until(lambda: "ALERT 1 study(ies) waiting" in orthanc.log_path.read_text(errors="replace"), 30,
               what="the alert line in Orthanc's log")  # fmt: skip
    st = orthanc.router_status()
    assert st["WaitingStudies"] == 1 and st["OldestWaitingSeconds"] >= 3, st
    metrics = orthanc.request("GET", "/cxr-ai/metrics").text
    assert "cxr_ai_router_waiting_studies 1" in metrics and "cxr_ai_router_node_reachable 0" in metrics

    b = make_image("DX", seed=22)
    _push(orthanc, [write(b, tmp_path / "b.dcm")])
    orthanc.stop()  # B never became stable in this process
    orthanc.start()
    wait_until(lambda: orthanc.router_status()["WaitingStudies"] == 2, 30,
               what="both studies waiting after the restart")  # fmt: skip
    assert orthanc.router_status()["NodeReachable"] is False  # persisted too

    scp = StoreSCP(port=ports.node, outdir=tmp_path / "node" / "in").start()
    try:
        wait_until(lambda: len(scp.received()) >= 2, 60, what="both CXRs at the node once it is back")
        wait_until(lambda: orthanc.router_status()["WaitingStudies"] == 0, 30, what="nothing left waiting")
        assert _received_uids(scp) == {str(a.SOPInstanceUID), str(b.SOPInstanceUID)}
        # a further restart sends nothing again (the marks and the checkpoint are stored in Orthanc)
        orthanc.stop()
        orthanc.start()
        st = _wait_routed(orthanc, studies=0)
        import time

        time.sleep(4)  # > StableAge + a poll: anything wrongly rescheduled would have gone out
        assert len(scp.received()) == 2, [p.name for p in scp.received()]
        assert orthanc.router_status()["WaitingStudies"] == 0
    finally:
        scp.stop()


def test_the_shared_routing_policy_runs_inside_orthanc(
    orthanc: LocalOrthanc, fake_node: StoreSCP, tmp_path: Path
) -> None:
    """Rows of docs/ROUTING.md in a real Orthanc: the plug-in imports the shared routing_policy."""
    study = pydicom.uid.generate_uid()
    ot = make_image("CR", study_uid=study, seed=31)  # rule 7: SC/OT with CHEST is analysed (was skipped by the node)
    ot.Modality = "OT"
    ot.SOPClassUID = ot.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    thorax = make_image("CR", study_uid=study, body_part="THORAX", seed=32)  # rule 7 (was dropped by both)
    sd_lateral = make_image("DX", study_uid=study, view_position=None, seed=33)  # rule 8 (was forwarded)
    sd_lateral.SeriesDescription = "CHEST LAT"
    ll = make_image("DX", study_uid=study, view_position="LL", seed=34)  # rule 6
    ot_no_body = make_image("CR", study_uid=study, body_part=None, seed=35)  # rule 4
    ot_no_body.Modality = "OT"
    ot_no_body.SOPClassUID = ot_no_body.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    images = [ot, thorax, sd_lateral, ll, ot_no_body]
    _push(orthanc, [write(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(images)])
    _wait_routed(orthanc, studies=1)
    wait_until(lambda: len(fake_node.received()) >= 2, 20, what="the two routed images at the fake node")
    assert _received_uids(fake_node) == {str(ot.SOPInstanceUID), str(thorax.SOPInstanceUID)}
    log = orthanc.log_path.read_text(errors="replace")
    assert "lateral view (SeriesDescription)" in log and "CHEST LAT" not in log  # no free text in the log


@pytest.mark.parametrize("history", [None, 10], ids=["shipped-config", "orthanc-default-history"])
def test_a_burst_of_studies_is_forwarded_once_each(
    orthanc_factory, fake_node: StoreSCP, tmp_path: Path, history: int | None
) -> None:  # type: ignore[no-untyped-def]
    """More studies than Orthanc's default ``JobsHistorySize`` (10) become stable together: no study is sent
    twice (RELIABILITY.md bug 9: the first jobs to finish were gone from ``/jobs`` by the next poll, and the
    router sent those studies again). With the shipped configuration (1000) every job is still there; with
    Orthanc's default (a site's own Orthanc) the router knows their outcome from Orthanc's JOB_SUCCESS changes."""
    orthanc = orthanc_factory(config_overrides={} if history is None else {"JobsHistorySize": history}).start()
    n = 16
    files = [write(make_image("CR", study_uid=pydicom.uid.generate_uid(), seed=100 + i), tmp_path / f"{i}.dcm")
             for i in range(n)]  # fmt: skip
    _push(orthanc, files)
    st = _wait_routed(orthanc, studies=n, timeout=60)
    wait_until(lambda: len(fake_node.received()) >= n, 30, what=f"{n} instances at the fake node")
    counters = st["Counters"]
    assert counters["jobs_resubmitted_after_restart"] == 0, counters
    assert counters["instances_forwarded"] == n and counters["jobs_succeeded"] == n, counters
    if history is None:
        assert counters["jobs_outcome_from_changes"] == 0, counters
