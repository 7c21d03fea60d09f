"""End to end: CXRs pushed into a real Orthanc come back as SR + SC through the routing plug-in and the node.

One Orthanc + node pair (``stack``) serves the module; the crash / outage tests start their own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from integration_helpers import REPO, Stack, dciodvfy_errors, make_image, write
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicom_node.results.sr.codes import NotEvaluatedReason
from dicom_node.results.sr.read import read_sr
from dicom_node.testing.local_orthanc import LocalOrthanc, storescu, wait_until

pytestmark = pytest.mark.integration

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
NODE_MANUFACTURER = "cxr-ai-node"
RESULT_TIMEOUT = 240.0  # s; the node analyses on 2 shared CPU cores

#: every patient name / ID this module sends (none may reach the node's log)
PATIENT_STRINGS: set[str] = set()


def _results(orthanc: LocalOrthanc, study_uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(SR tags, SC tags) of the node's results in a study."""
    tags = [t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") == NODE_MANUFACTURER]
    srs = [t for t in tags if t.get("Modality") == "SR"]
    scs = [t for t in tags if t.get("SOPClassUID") == SC_STORAGE]
    return srs, scs


def _wait_results(orthanc: LocalOrthanc, study_uid: str, timeout: float = RESULT_TIMEOUT) -> tuple[list, list]:
    def both() -> tuple[list, list] | None:
        srs, scs = _results(orthanc, study_uid)
        return (srs, scs) if srs and scs else None

    return wait_until(both, timeout, interval=1.0, what=f"SR and SC in study {study_uid}")


def _push(port: int, files: list[Path], **kw: Any) -> None:
    res = storescu(files, port, **kw)
    assert res.returncode == 0, f"storescu failed ({res.returncode}): {res.stdout}\n{res.stderr}"


def _remember_patient(ds: pydicom.Dataset) -> None:
    PATIENT_STRINGS.update({str(ds.PatientName), str(ds.PatientID)} - {""})


def _events(stack_node: Any, event: str, sop_uid: str) -> list[dict[str, Any]]:
    return [r for r in stack_node.log_records() if r.get("event") == event and r.get("sop_instance_uid") == sop_uid]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """The inference engine, in-process, with the node's defaults (for comparing findings)."""
    from models.inference.engine import InferenceEngine

    eng = InferenceEngine(REPO / "monai_bundles", device="cpu", num_threads=1, decode_workers=1)
    yield eng
    eng.close()


def _sr_probability(sr_path: Path) -> float:
    result = read_sr(sr_path)
    assert result.probability is not None, f"no image-level probability in {sr_path}"
    return result.probability


def _sr_boxes(sr_path: Path) -> list[tuple[np.ndarray, float]]:
    return [(box.polyline, box.probability) for box in read_sr(sr_path).boxes]


# ------------------------------------------------------------------------------------------- the main flow
def test_cxrs_pushed_into_orthanc_come_back_as_sr_and_sc(
    stack: Stack, phantom_files: list[Path], engine: Any, tmp_path: Path
) -> None:
    orthanc = stack.orthanc
    _push(orthanc.dicom_port, phantom_files)
    boxes_checked = 0
    for f in phantom_files:
        src = pydicom.dcmread(f)
        _remember_patient(src)
        srs, scs = _wait_results(orthanc, str(src.StudyInstanceUID))
        assert len(srs) == 1 and len(scs) == 1, (srs, scs)

        sr_path = tmp_path / f"{src.SOPInstanceUID}.sr.dcm"
        sr_path.write_bytes(orthanc.file(srs[0]["_orthanc_id"]))
        assert dciodvfy_errors(sr_path) == []
        sr_ds = pydicom.dcmread(sr_path)
        assert sr_ds.StudyInstanceUID == src.StudyInstanceUID
        assert str(sr_ds.PatientID) == str(src.PatientID)

        findings = engine.analyse(src)
        assert findings.analysed, findings.not_analysed_reason
        assert _sr_probability(sr_path) == pytest.approx(findings.probability, abs=1e-4)
        got = sorted(_sr_boxes(sr_path), key=lambda pb: -pb[1])  # both sides by decreasing score
        assert len(got) == len(findings.boxes), (got, findings.boxes)
        for (polyline, score), box in zip(got, sorted(findings.boxes, key=lambda b: -b.score), strict=True):
            np.testing.assert_allclose(polyline, np.asarray(box.polyline()), atol=0.05)
            assert score == pytest.approx(box.score, abs=1e-3)
            boxes_checked += 1

        # the SC renders in Orthanc
        preview = orthanc.get_bytes(f"/instances/{scs[0]['_orthanc_id']}/preview")
        assert preview.headers["content-type"].startswith("image/png")
        assert preview.content[:8] == b"\x89PNG\r\n\x1a\n"
        sc_path = tmp_path / f"{src.SOPInstanceUID}.sc.dcm"
        sc_path.write_bytes(orthanc.file(scs[0]["_orthanc_id"]))
        assert dciodvfy_errors(sc_path) == []
        # ... stored as the node sent it, JPEG Baseline (the default), and Orthanc decodes it: its
        # preview is the SC's own pixels (as pydicom decodes them) within JPEG decoders' rounding
        sc_ds = pydicom.dcmread(sc_path)
        assert sc_ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        stored_ts = orthanc.get_bytes(f"/instances/{scs[0]['_orthanc_id']}/metadata/TransferSyntax").text
        assert stored_ts.strip() == JPEGBaseline8Bit
        shown = np.asarray(Image.open(io.BytesIO(preview.content)).convert("RGB"), dtype=np.int16)
        assert shown.shape == (sc_ds.Rows, sc_ds.Columns, 3)
        assert np.abs(shown - sc_ds.pixel_array.astype(np.int16)).mean() < 3.0
    status = orthanc.router_status()
    assert status["Counters"]["instances_forwarded"] >= len(phantom_files)
    print(f"compared {boxes_checked} boxes over {len(phantom_files)} images")  # visible with -s
    # the phantoms include a Lung Opacity case that the shipped detector finds: the box comparison is real
    assert boxes_checked >= 1, "no box was compared: the SR/engine box equality check proved nothing"


def test_the_sr_in_orthanc_says_what_cxr_node_infer_json_says(
    stack: Stack, phantom_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: the SR the node delivered, read back with highdicom, gives the same decision,
    probability and boxes as ``cxr-node infer --json`` on the same file (same defaults, one rule)."""
    import argparse

    from dicom_node.cli import infer as cli_infer

    _push(stack.orthanc.dicom_port, phantom_files)  # (again: the same instances give the same results)
    parser = argparse.ArgumentParser()
    cli_infer.configure(parser)
    args = parser.parse_args([*map(str, phantom_files), "--json", "--device", "cpu", "--threads", "2",
                              "--bundles", str(REPO / "monai_bundles")])  # fmt: skip
    assert cli_infer.main(args) == 0
    records = {r["sop_instance_uid"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    for f in phantom_files:
        src = pydicom.dcmread(f, stop_before_pixels=True)
        srs, _ = _wait_results(stack.orthanc, str(src.StudyInstanceUID))
        path = tmp_path / f"{src.SOPInstanceUID}.sr.dcm"
        path.write_bytes(stack.orthanc.file(srs[0]["_orthanc_id"]))
        sr, record = read_sr(path), records[str(src.SOPInstanceUID)]
        assert sr.finding == record["finding"]["meaning"]
        assert sr.decision == ("Present" if record["positive"] else "Absent")
        assert sr.probability == pytest.approx(record["probability"], abs=1e-4)
        assert sr.threshold == pytest.approx(record["threshold"], abs=1e-9)
        got = sorted(((b.polyline, b.probability) for b in sr.boxes), key=lambda pb: -pb[1])
        assert len(got) == len(record["boxes"])
        for (polyline, p), box in zip(got, record["boxes"], strict=True):  # infer lists boxes by score
            x, y, w, h = box["x"], box["y"], box["width"], box["height"]
            np.testing.assert_allclose(polyline, [(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)], atol=0.01)
            assert p == pytest.approx(box["score"], abs=1e-4)


def test_second_push_leaves_exactly_one_sr_and_sc(stack: Stack, phantom_files: list[Path]) -> None:
    orthanc, node = stack.orthanc, stack.node
    f = phantom_files[0]
    src = pydicom.dcmread(f, stop_before_pixels=True)
    study_uid, sop_uid = str(src.StudyInstanceUID), str(src.SOPInstanceUID)
    _wait_results(orthanc, study_uid)
    delivered_before = len(_events(node, "job_delivered", sop_uid))
    assert delivered_before >= 1

    _push(orthanc.dicom_port, [f])  # same instance into Orthanc again
    sid = orthanc.study_id(study_uid)
    answer = orthanc.post(f"/cxr-ai/studies/{sid}/analyze")  # and forced to the node again
    assert len(answer["Forwarded"]) == 1
    wait_until(lambda: len(_events(node, "job_delivered", sop_uid)) > delivered_before, RESULT_TIMEOUT,
               interval=1.0, what="the node to analyse and deliver the instance a second time")  # fmt: skip
    srs, scs = _results(orthanc, study_uid)
    assert (len(srs), len(scs)) == (1, 1)
    originals = [t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") != NODE_MANUFACTURER]
    assert len(originals) == 1


def test_unknown_calling_ae_is_refused_by_the_node(stack: Stack, phantom_files: list[Path]) -> None:
    res = storescu([phantom_files[0]], stack.ports.node, calling_aet="INTRUDER", called_aet="AINODE")
    assert res.returncode != 0
    assert "reject" in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
    wait_until(lambda: any(r.get("event") == "association_rejected" for r in stack.node.log_records()), 10,
               what="association_rejected in the node log")  # fmt: skip


def test_non_cxr_is_not_forwarded_by_orthanc_and_skipped_by_the_node(stack: Stack, tmp_path: Path) -> None:
    orthanc, node = stack.orthanc, stack.node
    # into Orthanc: the plug-in does not forward a CT
    before = orthanc.router_status()["Counters"]
    ct = make_image("CT", body_part="CHEST", view_position=None, patient_name="Ct^Only", patient_id="CT-77", seed=21)
    _remember_patient(ct)
    _push(orthanc.dicom_port, [write(ct, tmp_path / "ct.dcm")])
    wait_until(lambda: orthanc.router_status()["Counters"]["studies_seen"] > before["studies_seen"], 30,
               what="the router to look at the CT study")  # fmt: skip
    after = orthanc.router_status()["Counters"]
    assert after["instances_forwarded"] == before["instances_forwarded"]
    assert after["instances_skipped"] >= before["instances_skipped"] + 1

    # straight to the node: acknowledged (success) and skipped, no results
    ct2 = make_image("CT", body_part="CHEST", view_position=None, patient_name="Ct^Direct", patient_id="CT-78", seed=22)
    _remember_patient(ct2)
    _push(stack.ports.node, [write(ct2, tmp_path / "ct2.dcm")], called_aet="AINODE")
    wait_until(lambda: _events(node, "skipped", str(ct2.SOPInstanceUID)), 20, what="skipped CT in the node log")
    assert not _events(node, "received", str(ct2.SOPInstanceUID))
    assert _results(orthanc, str(ct2.StudyInstanceUID)) == ([], [])
    assert _results(orthanc, str(ct.StudyInstanceUID)) == ([], [])


@pytest.mark.parametrize("name", ["Müller^Zoë", "山田^太郎"])
def test_utf8_patient_name_round_trips_into_sr_and_sc(
    stack: Stack, phantom_files: list[Path], tmp_path: Path, name: str
) -> None:
    ds = pydicom.dcmread(phantom_files[1])
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = "ID-" + name.split("^")[0]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    _remember_patient(ds)
    path = write(ds, tmp_path / "utf8.dcm")
    _push(stack.orthanc.dicom_port, [path])
    srs, scs = _wait_results(stack.orthanc, str(ds.StudyInstanceUID))
    for tags in (srs[0], scs[0]):
        assert tags["PatientName"] == name
        result = pydicom.dcmread(io.BytesIO(stack.orthanc.file(tags["_orthanc_id"])))
        assert str(result.PatientName) == name
        assert str(result.PatientID) == str(ds.PatientID)
        charset = result.SpecificCharacterSet
        assert "ISO_IR 192" in ([charset] if isinstance(charset, str) else list(charset))


def test_no_patient_name_or_id_in_the_node_log(stack: Stack, phantom_files: list[Path], tmp_path: Path) -> None:
    """Every name / ID sent to this module's node (this test's own image, and those of the tests that ran
    before it) is searched in the raw log file."""
    ds = pydicom.dcmread(phantom_files[2])
    ds.PatientName, ds.PatientID = "Zyxwvu^Secretname", "SECRET-ID-4711"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    _remember_patient(ds)
    _push(stack.orthanc.dicom_port, [write(ds, tmp_path / "secret.dcm")])
    _wait_results(stack.orthanc, str(ds.StudyInstanceUID))
    wait_until(lambda: _events(stack.node, "job_delivered", str(ds.SOPInstanceUID)), 30, what="job_delivered")
    text = stack.node.log_text()
    assert str(ds.SOPInstanceUID) in text  # the log does talk about this instance ...
    for value in PATIENT_STRINGS:  # ... but never names the patient
        for form in {value, json.dumps(value)[1:-1], *value.split("^")}:
            if len(form) >= 3:
                assert form not in text, f"patient data {form!r} found in the node log"


def test_undecodable_cxr_leaves_a_not_evaluated_sr_in_the_study(stack: Stack, tmp_path: Path) -> None:
    """Issue 12 point 5: a CXR whose pixel data cannot be decoded is not silently dropped - the study
    gets a short "not evaluated" SR (reason category, no header text) and no overlay."""
    orthanc, node = stack.orthanc, stack.node
    ds = make_image("CR", patient_name="Broken^Pixels", patient_id="BRK-5150", rows=128, columns=128, seed=31)
    ds.PixelData = ds.PixelData[:1000]  # 1000 bytes for 128 x 128 x 2: the decoder refuses it
    _remember_patient(ds)
    _push(orthanc.dicom_port, [write(ds, tmp_path / "broken.dcm")])
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)

    def status_sr() -> list[dict[str, Any]]:
        return _results(orthanc, study_uid)[0]

    (tags,) = wait_until(status_sr, RESULT_TIMEOUT, interval=1.0, what=f"a 'not evaluated' SR in study {study_uid}")
    assert _results(orthanc, study_uid)[1] == []  # no overlay of an image that cannot be decoded
    path = tmp_path / "status.sr.dcm"
    path.write_bytes(orthanc.file(tags["_orthanc_id"]))
    assert dciodvfy_errors(path) == []
    result = read_sr(path)
    assert result.source_sop_instance_uid == sop_uid
    assert (result.decision, result.not_evaluated_reason) == ("Not Evaluated", NotEvaluatedReason.PIXEL_DATA_UNDECODABLE)
    sr = pydicom.dcmread(path)
    assert str(sr.PatientID) == "BRK-5150" and sr.StudyInstanceUID == ds.StudyInstanceUID
    (failed,) = _events(node, "failed", sop_uid)
    assert failed["not_evaluated_sr"] is True and failed["reason_category"] == "pixel-data-undecodable"
    # the delivery log line names the SR (result SOP Instance UID)
    wait_until(lambda: _events(node, "delivered", str(sr.SOPInstanceUID)), 30, what="the status SR's delivery in the log")


# ------------------------------------------------------------------------------------------- outages
@pytest.mark.slow
def test_orthanc_down_at_delivery_results_arrive_after_it_restarts(
    orthanc_factory, node_factory, phantom_files: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory().start()
    node = node_factory().start()
    orthanc.stop()
    f = phantom_files[2]
    src = pydicom.dcmread(f, stop_before_pixels=True)
    _push(node.port, [f], called_aet="AINODE")  # straight to the node; Orthanc is down
    wait_until(lambda: any(r.get("event") == "delivery_failed" for r in node.log_records()), RESULT_TIMEOUT,
               interval=1.0, what="a failed delivery while Orthanc is down")  # fmt: skip
    orthanc.start()
    srs, scs = _wait_results(orthanc, str(src.StudyInstanceUID))
    assert (len(srs), len(scs)) == (1, 1)


@pytest.mark.slow
def test_node_killed_after_acknowledging_results_arrive_after_restart(
    orthanc_factory, node_factory, phantom_files: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory().start()
    node = node_factory().start()
    orthanc.stop()  # nothing can be delivered before the crash
    f = phantom_files[0]
    src = pydicom.dcmread(f, stop_before_pixels=True)
    _push(node.port, [f], called_aet="AINODE")  # C-STORE success = acknowledged
    assert _events(node, "received", str(src.SOPInstanceUID))
    node.kill()  # SIGKILL
    orthanc.start()
    node.start()
    srs, scs = _wait_results(orthanc, str(src.StudyInstanceUID))
    assert (len(srs), len(scs)) == (1, 1)
    assert node.starts == 2


def test_local_orthanc_runs_with_nagle_off(stack: Stack) -> None:
    """The demo's and tests' Orthanc gets TCP_NODELAY=1 (DCMTK's switch for Nagle's algorithm)."""
    assert stack.orthanc.proc is not None
    environ = Path(f"/proc/{stack.orthanc.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"TCP_NODELAY=1" in environ


def test_orthanc_environment_keeps_an_explicit_value() -> None:
    from dicom_node.testing.local_orthanc import orthanc_environment

    assert orthanc_environment({"PATH": "/bin"}) == {"PATH": "/bin", "TCP_NODELAY": "1"}
    assert orthanc_environment({"TCP_NODELAY": "0"})["TCP_NODELAY"] == "0"
