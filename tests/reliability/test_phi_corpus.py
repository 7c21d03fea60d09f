"""Hostile header corpus: no patient data and no secret in any log line of the node or of the plug-in.

Every data set carries canary strings in its patient and free-text attributes (name, ID, series and
study descriptions, protocol, institution, operators, comments), and the extra kinds put them where
routing, the view gate and the decoders read and quote values: BodyPartExamined, ViewPosition,
Modality, Manufacturer, a ViewCodeSequence meaning, PhotometricInterpretation, a UID, a length that
makes Modality swallow its neighbours. All 16 kinds of the bad-input suite are sent with the canaries
too. They go to the real node (``cxr-node serve``, JSON logs, a REST destination with a password that
refuses connections) and through a real Orthanc with the routing plug-in. Afterwards the node's whole
output (stdout + stderr), the plug-in's log lines and the stderr of ``cxr-node serve`` refusing
invalid settings must not contain a canary or the password.

Before (issue 13 point 6): routing reasons quoted SeriesDescription / ProtocolName, pydicom's warnings
and parser errors quoted header values, and ``cxr-node serve`` printed the REST password on a
settings validation error.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import hostile
import pytest
from pydicom.dataset import Dataset
from pynetdicom import _config
from reliability_helpers import REPO, journal_rows, make_node, report, send_files, wait_for

from dicom_node.testing.local_orthanc import LocalOrthanc, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME, PID, WORD = "Qzxwvk^Jpmfld", "QZX99173", "Vbnmyq"
PASSWORD = "Pw-Zq81-secret"
CANARIES = re.compile("qzxwvk|jpmfld|qzx99173|vbnmyq|" + re.escape(PASSWORD.lower()))


def _with_canaries(ds: Dataset) -> Dataset:
    ds.PatientName, ds.PatientID = NAME, PID
    ds.SeriesDescription = f"{WORD} series"
    ds.StudyDescription = f"Study of {NAME}"
    ds.ProtocolName = f"{WORD} protocol"
    ds.InstitutionName, ds.OperatorsName, ds.ImageComments = f"{WORD} hospital", NAME, f"{PID} comment"
    ds.ReferringPhysicianName = NAME
    return ds


def extra_kinds(rng: random.Random) -> list[tuple[str, bytes, str]]:
    """Canaries where the node reads (and used to quote) values."""
    out = []

    def add(mutate) -> None:  # type: ignore[no-untyped-def]
        ds = _with_canaries(hostile.base_dataset(rng))
        mutate(ds)
        out.append((str(ds.SOPInstanceUID), hostile.encode(ds), hostile.EXPLICIT_LE))

    add(lambda ds: setattr(ds, "BodyPartExamined", WORD.upper()))
    add(lambda ds: setattr(ds, "BodyPartExamined", NAME))
    add(lambda ds: setattr(ds, "ViewPosition", WORD.upper()))
    add(lambda ds: setattr(ds, "Modality", PID))
    add(lambda ds: setattr(ds, "Manufacturer", NAME))
    add(lambda ds: (ds.__delattr__("ViewPosition"), setattr(ds, "SeriesDescription", f"CHEST LAT {NAME}")))
    add(lambda ds: (ds.__delattr__("ViewPosition"), setattr(ds, "ProtocolName", f"{PID} LAT")))
    add(lambda ds: setattr(ds, "PhotometricInterpretation", WORD.upper()))

    def code(ds: Dataset) -> None:
        del ds.ViewPosition
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "X1", "99Z", f"lateral {NAME}"
        ds.ViewCodeSequence = [item]

    add(code)
    add(lambda ds: setattr(ds, "SeriesInstanceUID", f"1.2.{PID}"))
    # Modality (0008,0060) claims a length that swallows the following elements (Manufacturer, descriptions)
    ds = _with_canaries(hostile.base_dataset(rng))
    body = bytearray(hostile.encode(ds))
    at = body.find(struct.pack("<HH", 0x0008, 0x0060) + b"CS")
    body[at + 6 : at + 8] = struct.pack("<H", 120)
    out.append((str(ds.SOPInstanceUID), bytes(body), hostile.EXPLICIT_LE))
    return out


def write_corpus(folder: Path, per_kind: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], list[Path]]:
    """(every file, the extra kinds' files): the bad-input kinds with canaries, then the extra kinds."""
    rng = random.Random(seed)
    real = hostile.base_dataset
    monkeypatch.setattr(hostile, "base_dataset", lambda r, *a, **k: _with_canaries(real(r, *a, **k)))
    items = [fn(rng) for fn in hostile.CATEGORIES.values() for _ in range(per_kind)]
    extra = extra_kinds(rng)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (uid, body, ts) in enumerate(items + extra):
        p = folder / f"{i:04d}.dcm"
        p.write_bytes(hostile.part10(uid, body, ts))
        paths.append(p)
    return paths, paths[len(items) :]


def leaks(text: str) -> list[str]:
    return [line[:300] for line in text.splitlines() if CANARIES.search(line.lower())]


def test_no_patient_data_or_secret_in_any_log_line(
    orthanc: LocalOrthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, extra = write_corpus(tmp_path / "corpus", per_kind=3, seed=613, monkeypatch=monkeypatch)
    # the settings error: cxr-node serve must not print the REST password
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    env.update({"PYTHONPATH": str(REPO), "CXR_NODE_DESTINATIONS": f"http://cxr:{PASSWORD}@127.0.0.1:1",
                "CXR_NODE_BIND": "0.0.0.0", "CXR_NODE_SPOOL_DIR": str(tmp_path / "bad")})  # fmt: skip
    bad = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve"], env=env, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "invalid settings" in bad.stderr, bad.stderr

    node = make_node(tmp_path, orthanc, CXR_NODE_DESTINATIONS=f"ORTHANC@127.0.0.1:{orthanc.dicom_port},"
                     f"http://cxr:{PASSWORD}@127.0.0.1:{free_port()}", CXR_NODE_RETRY_BASE_S="1",
                     CXR_NODE_LOG_LEVEL="DEBUG")  # fmt: skip
    node.start()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sent = send_files(node.port, files, timeout=30)
    wait_for(lambda: journal_rows(node.spool_dir, "SELECT COUNT(*) FROM jobs WHERE state='received'")[0][0] == 0,
             300, "every acknowledged data set analysed or failed", interval=1.0)  # fmt: skip
    wait_for(lambda: journal_rows(node.spool_dir, "SELECT MIN(attempts) FROM outbox WHERE destination LIKE 'http%'")[0][0]
             or 0, 60, "a failed delivery to the REST destination", interval=1.0)  # fmt: skip
    node.stop()

    # through Orthanc: the plug-in routes what Orthanc stores (the extra kinds only: Orthanc 1.10 itself
    # dies on some of the bad-input kinds, e.g. sequences nested thousands deep)
    pushed = 0
    for path in extra:
        r = orthanc.request("POST", "/instances", content=path.read_bytes())
        pushed += r.status_code == 200
    studies = orthanc.get("/studies")
    for sid in studies:
        orthanc.post(f"/cxr-ai/studies/{sid}/analyze")
    router_lines = [line for line in orthanc.log_path.read_text(errors="replace").splitlines() if "cxr-ai router" in line]

    node_leaks = leaks(node.log_text())
    router_leaks = leaks("\n".join(router_lines))
    settings_leaks = leaks(bad.stdout + bad.stderr)
    outcomes = {k: 0 for k in ("acknowledged", "refused")}
    for s in sent.statuses.values():
        outcomes["acknowledged" if s == 0 else "refused"] += 1
    report("hostile header corpus: patient data and secrets in logs", tried=len(files), pushed_to_orthanc=pushed,
           node_log_lines=len(node.log_text().splitlines()), router_log_lines=len(router_lines),
           leaking_lines=len(node_leaks) + len(router_leaks) + len(settings_leaks), **outcomes)  # fmt: skip
    assert len(sent.statuses) == len(files), "some data sets got no C-STORE response"
    assert router_lines and studies, "the plug-in saw nothing"
    assert not settings_leaks, settings_leaks
    assert not node_leaks, "\n".join(node_leaks[:10])
    assert not router_leaks, "\n".join(router_leaks[:10])
    # the corpus did reach the places that used to quote values
    text = node.log_text()
    assert "lateral view (SeriesDescription)" in text or "lateral view (ProtocolName)" in text
    assert "BodyPartExamined=(other value)" in text and "Modality (other value)" in text
