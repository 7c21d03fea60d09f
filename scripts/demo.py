"""The demo behind ``bash scripts/demo.sh``: Orthanc + node on loopback, phantom CXRs in, SR + SC out.

``python scripts/demo.py start``  starts (or reuses) Orthanc and the node, pushes the demo CXRs into
                                  Orthanc with ``storescu``, waits (bounded) for the SR and SC of each
                                  and prints where to see them and the findings;
``python scripts/demo.py stop``   stops both servers.

State lives in ``$CXR_DEMO_DIR`` (default ``<repo>/.demo``): Orthanc's database, the node's spool,
logs, pid files and the generated Orthanc password. Ports: ``CXR_DEMO_HTTP_PORT`` (18042),
``CXR_DEMO_DICOM_PORT`` (14242), ``CXR_DEMO_NODE_PORT`` (11112); Debian's own Orthanc service keeps
8042/4242.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicom_node.testing.local_orthanc import (  # noqa: E402
    NODE_AET,
    ORTHANC_AET,
    PUSHER_AET,
    LocalOrthanc,
    echoscu,
    port_open,
    storescu,
    wait_until,
)

STATE = Path(os.environ.get("CXR_DEMO_DIR", REPO / ".demo"))
HTTP_PORT = int(os.environ.get("CXR_DEMO_HTTP_PORT", "18042"))
DICOM_PORT = int(os.environ.get("CXR_DEMO_DICOM_PORT", "14242"))
NODE_PORT = int(os.environ.get("CXR_DEMO_NODE_PORT", "11112"))
USER = "demo"
N_IMAGES = int(os.environ.get("CXR_DEMO_IMAGES", "4"))
RESULT_TIMEOUT_S = float(os.environ.get("CXR_DEMO_TIMEOUT_S", "900"))
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ processes
def _pid_alive(pid_file: Path, expect: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line contains ``expect``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid if expect in cmdline else None


def _stop_pid(pid_file: Path, expect: str, name: str, timeout: float = 30.0) -> None:
    pid = _pid_alive(pid_file, expect)
    if pid is None:
        say(f"{name} is not running")
        pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid_file, expect):
        time.sleep(0.3)
    if _pid_alive(pid_file, expect):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    say(f"{name} stopped (pid {pid})")


def _password() -> str:
    path = STATE / "orthanc-password"
    if not path.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(12))
    return path.read_text().strip()


def _orthanc() -> LocalOrthanc:
    return LocalOrthanc(workdir=STATE / "orthanc", http_port=HTTP_PORT, dicom_port=DICOM_PORT, node_port=NODE_PORT,
                        user=USER, password=_password(), stable_age_s=2, retry_delay_s=5.0,
                        max_retry_delay_s=60.0)  # fmt: skip


def start_orthanc() -> LocalOrthanc:
    orthanc = _orthanc()
    pid_file = STATE / "orthanc.pid"
    if _pid_alive(pid_file, "Orthanc"):
        say(f"Orthanc already running on http://127.0.0.1:{HTTP_PORT}")
        return orthanc
    if port_open(HTTP_PORT) or port_open(DICOM_PORT):
        raise SystemExit(f"port {HTTP_PORT} or {DICOM_PORT} is in use; set CXR_DEMO_HTTP_PORT / CXR_DEMO_DICOM_PORT")
    orthanc.start(timeout=60)
    assert orthanc.proc is not None
    pid_file.write_text(str(orthanc.proc.pid))
    say(f"Orthanc started on http://127.0.0.1:{HTTP_PORT} (DICOM {ORTHANC_AET}@127.0.0.1:{DICOM_PORT}), "
        f"log {orthanc.log_path}")  # fmt: skip
    return orthanc


def start_node() -> None:
    pid_file = STATE / "node.pid"
    if _pid_alive(pid_file, "dicom_node.cli"):
        say(f"node already running ({NODE_AET}@127.0.0.1:{NODE_PORT})")
        return
    if port_open(NODE_PORT):
        raise SystemExit(f"port {NODE_PORT} is in use; set CXR_DEMO_NODE_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    env.update({
        "CXR_NODE_AE_TITLE": NODE_AET,
        "CXR_NODE_BIND": "127.0.0.1",
        "CXR_NODE_PORT": str(NODE_PORT),
        "CXR_NODE_HTTP_PORT": os.environ.get("CXR_DEMO_HEALTH_PORT", "18080"),
        "CXR_NODE_ALLOWED_AETS": f"{ORTHANC_AET},{PUSHER_AET}",
        "CXR_NODE_DESTINATIONS": f"{ORTHANC_AET}@127.0.0.1:{DICOM_PORT}",
        "CXR_NODE_SPOOL_DIR": str(STATE / "spool"),
        "CXR_NODE_BUNDLES_DIR": str(REPO / "monai_bundles"),
        "CXR_NODE_LOG_FORMAT": "text",
    })  # fmt: skip
    log_path = STATE / "node.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "serve"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    pid_file.write_text(str(proc.pid))
    say(f"node starting (loading the MONAI bundles), log {log_path}")

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"the node exited with {proc.returncode}; see {log_path}")
        return port_open(NODE_PORT) and echoscu(NODE_PORT, calling_aet=ORTHANC_AET)

    wait_until(ready, 600, interval=1.0, what="the node to answer C-ECHO")
    say(f"node ready: {NODE_AET}@127.0.0.1:{NODE_PORT}")


# ------------------------------------------------------------------------------------------ data
def demo_images() -> list[Path]:
    from models.phantoms.synth import write_rsna_dataset

    out = STATE / "phantoms"
    files = sorted((out / "stage_2_train_images").glob("*.dcm"))
    if len(files) != N_IMAGES:
        say(f"generating {N_IMAGES} synthetic chest X-ray phantoms (models.phantoms.synth) in {out}")
        write_rsna_dataset(out, n=N_IMAGES, seed=2026, size=1024)
        files = sorted((out / "stage_2_train_images").glob("*.dcm"))
    return files


#: PneumoniaMNIST (MedMNIST v2, CC BY 4.0; images from Kermany et al., Cell 2018), read from ../shared when present
PNEUMONIAMNIST = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"
#: test-split images pushed as "real-looking" demo CXRs: one labelled pneumonia, one normal
REAL_DEMO_INDICES = {"pneumonia": 0, "normal": 3}


def real_demo_images() -> list[Path]:
    """Two real paediatric CXRs (PneumoniaMNIST test split, 28 px, upsampled to 1024 px) as CR DICOMs,
    when ``../shared/data/pneumoniamnist.npz`` is present (else none): the shipped classifier was
    trained on real radiographs of this kind (never on phantoms, whose scores mean little), so these show
    what it was made for: a positive result with boxes and the Grad-CAM heatmap, and a negative one.
    Their 28-px origin makes them blurry; they are not clinical images."""
    if not PNEUMONIAMNIST.is_file():
        say(f"{PNEUMONIAMNIST} not found: phantoms only")
        return []
    import numpy as np
    from PIL import Image

    from models.evaluation.holdout import pneumoniamnist_dicom

    out = STATE / "real"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    with np.load(PNEUMONIAMNIST) as z:
        images, labels = z["test_images"], z["test_labels"].reshape(-1)
    for label, start in REAL_DEMO_INDICES.items():
        want = 1 if label == "pneumonia" else 0
        index = next(i for i in range(start, len(labels)) if int(labels[i]) == want)
        path = out / f"pneumoniamnist-test-{index}.dcm"
        if not path.is_file():
            ds = pneumoniamnist_dicom(images[index], index, "test")
            big = np.asarray(Image.fromarray(images[index]).resize((1024, 1024), Image.Resampling.BICUBIC), np.uint8)
            ds.Rows, ds.Columns = big.shape
            ds.PixelData = big.tobytes()
            ds.Modality = "CR"  # as the RSNA challenge's Secondary Capture CXRs
            ds.ViewPosition = "PA"
            ds.PatientID = f"PMNIST-TEST-{index}"
            ds.PatientName = f"PneumoniaMNIST^Test{index}"
            ds.SeriesDescription = f"PneumoniaMNIST test {index} ({label}), CC BY 4.0, 28->1024 px"
            ds.save_as(path, enforce_file_format=True)
        files.append(path)
    say(f"{len(files)} real paediatric CXRs from PneumoniaMNIST's test split (one pneumonia, one normal) in {out}")
    return files


def _results(orthanc: LocalOrthanc, study_uid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tags = [t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") == "cxr-ai-node"]
    return [t for t in tags if t.get("Modality") == "SR"], [t for t in tags if t.get("SOPClassUID") == SC_STORAGE]


def _summary(orthanc: LocalOrthanc, sr_id: str) -> str:
    """One line of findings read back from the SR (``dicom_node.results.sr.read``, highdicom)."""
    import numpy as np

    from dicom_node.results.sr.read import read_sr

    sr = read_sr(orthanc.file(sr_id))
    if sr.not_evaluated_reason is not None:
        return f"{sr.finding}: not evaluated ({sr.not_evaluated_reason.concept.meaning})"
    parts = [f"{sr.finding}: {sr.decision} (probability {sr.probability:.3f}, threshold {sr.threshold:g})",
             f"{len(sr.boxes)} opacity box(es)"]  # fmt: skip
    for box in sr.boxes:
        pts = box.polyline
        parts.append(f"[x={pts[:, 0].min():.0f} y={pts[:, 1].min():.0f} "
                     f"w={np.ptp(pts[:, 0]):.0f} h={np.ptp(pts[:, 1]):.0f} p={box.probability:.2f}]")  # fmt: skip
    return ", ".join(parts)


def cmd_start() -> int:
    import pydicom

    STATE.mkdir(parents=True, exist_ok=True)
    orthanc = start_orthanc()
    start_node()
    files = demo_images() + real_demo_images()
    res = storescu(files, DICOM_PORT)
    if res.returncode != 0:
        raise SystemExit(f"storescu failed: {res.stdout}{res.stderr}")
    say(f"pushed {len(files)} CXRs into Orthanc with storescu ({PUSHER_AET} -> {ORTHANC_AET}@127.0.0.1:{DICOM_PORT});"
        " the routing plug-in forwards each stable study to the node")  # fmt: skip
    studies = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
    say(f"waiting (at most {RESULT_TIMEOUT_S:.0f} s) for the SR and SC of every image ...")
    t0 = time.monotonic()
    wait_until(lambda: all(all(_results(orthanc, s)) for s in studies), RESULT_TIMEOUT_S, interval=2.0,
               what="SR and SC of every demo image in Orthanc")  # fmt: skip
    say(f"all results are in Orthanc ({time.monotonic() - t0:.0f} s)")
    print()
    print(f"Orthanc web UI : http://127.0.0.1:{HTTP_PORT}/app/explorer.html")
    print(f"credentials    : {USER} / {_password()}   (password kept in {STATE / 'orthanc-password'})")
    print()
    for study_uid in studies:
        sid = orthanc.study_id(study_uid)
        srs, scs = _results(orthanc, study_uid)
        print(f"study {sid}  http://127.0.0.1:{HTTP_PORT}/app/explorer.html#study?uuid={sid}")
        print(f"  SR instance {srs[0]['_orthanc_id']}  SC instance {scs[0]['_orthanc_id']}")
        print(f"  SC preview  http://127.0.0.1:{HTTP_PORT}/instances/{scs[0]['_orthanc_id']}/preview")
        print(f"  findings    {_summary(orthanc, srs[0]['_orthanc_id'])}")
    print()
    print("Servers keep running. Stop them with:  bash scripts/demo.sh --stop")
    return 0


def cmd_stop() -> int:
    _stop_pid(STATE / "node.pid", "dicom_node.cli", "node")
    _stop_pid(STATE / "orthanc.pid", "Orthanc", "Orthanc")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["start", "stop"])
    args = p.parse_args(argv)
    return cmd_start() if args.command == "start" else cmd_stop()


if __name__ == "__main__":
    sys.exit(main())
