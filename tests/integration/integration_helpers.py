"""Helpers of the integration tests: the node as a subprocess, a fake node (storescp), DICOM builders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.testing.local_orthanc import (
    NODE_AET,
    ORTHANC_AET,
    PUSHER_AET,
    LocalOrthanc,
    ProcessExited,
    echoscu,
    port_open,
    terminate,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools ``dciodvfy`` for one file."""
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]




@dataclass
class StoreSCP:
    """dcmtk ``storescp`` pretending to be the node (for plug-in tests without the node)."""

    port: int
    outdir: Path
    ae_title: str = NODE_AET
    proc: subprocess.Popen[bytes] | None = None
    #: extra storescp options (e.g. ``+xa``: accept every transfer syntax, compressed ones included)
    options: Sequence[str] = ()

    def start(self, timeout: float = 15.0) -> StoreSCP:
        self.outdir.mkdir(parents=True, exist_ok=True)
        log = open(self.outdir.parent / f"storescp-{self.port}.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(["storescp", *self.options, "-aet", self.ae_title, "-od", str(self.outdir),
                                          "-uf", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()
        wait_until(lambda: port_open(self.port), timeout, what=f"storescp on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=5)
            self.proc = None

    def received(self) -> list[Path]:
        return sorted(p for p in self.outdir.iterdir() if p.is_file())




@dataclass
class NodeProcess:
    """``cxr-node serve`` as a subprocess (so that tests can SIGKILL and restart it)."""

    workdir: Path
    port: int
    orthanc_dicom_port: int
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: how to tell the node is up (default: dcmtk C-ECHO as ORTHANC, plain DICOM)
    ready_check: Callable[[], bool] | None = None
    #: the command line (default: ``python -m dicom_node.cli serve``); fault tests wrap it
    command: Sequence[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        env.update(
            {
                "CXR_NODE_AE_TITLE": NODE_AET,
                "CXR_NODE_BIND": "127.0.0.1",
                "CXR_NODE_PORT": str(self.port),
                "CXR_NODE_HTTP_PORT": "0",
                "CXR_NODE_ALLOWED_AETS": f"{ORTHANC_AET},{PUSHER_AET}",
                "CXR_NODE_DESTINATIONS": f"{ORTHANC_AET}@127.0.0.1:{self.orthanc_dicom_port}",
                "CXR_NODE_SPOOL_DIR": str(self.spool_dir),
                "CXR_NODE_BUNDLES_DIR": str(REPO / "monai_bundles"),
                "CXR_NODE_DEVICE": "cpu",
                "CXR_NODE_LOG_FORMAT": "json",
                "CXR_NODE_LOG_LEVEL": "INFO",
                "CXR_NODE_DECODE_WORKERS": "1",
                "CXR_NODE_RETRY_BASE_S": "1",
                "CXR_NODE_RETRY_MAX_S": "2",
                "CXR_NODE_PERMANENT_RETRY_S": "2",
                "CXR_NODE_NETWORK_TIMEOUT_S": "10",
                "OMP_NUM_THREADS": "2",
                "MKL_NUM_THREADS": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(self.env_overrides)
        return env

    def start(self, timeout: float = 180.0) -> NodeProcess:
        """Start the node and wait (bounded) until it answers C-ECHO."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"node is already running (pid {self.proc.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(list(self.command or [sys.executable, "-m", "dicom_node.cli", "serve"]),
                                         cwd=self.workdir,
                                         env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        finally:
            log.close()
        self.starts += 1

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ProcessExited(f"node exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.ready_check is not None:
                return port_open(self.port) and self.ready_check()
            return port_open(self.port) and echoscu(self.port, calling_aet=ORTHANC_AET)

        try:
            wait_until(ready, timeout, interval=0.5, what="the node to answer C-ECHO")
        except Exception:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=30)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL (no cleanup at all: the crash case)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 20, max_chars: int = 4000) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])[-max_chars:]

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines (non-JSON lines, e.g. tracebacks of a crash, are skipped)."""
        out = []
        for line in self.log_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


@dataclass(frozen=True)
class Ports:
    """Free loopback ports of one test: Orthanc HTTP and DICOM, and the node's (or fake node's) SCP."""

    http: int
    dicom: int
    node: int


@dataclass
class Stack:
    """A running Orthanc and node wired together (shared by the tests of one module)."""

    orthanc: LocalOrthanc
    node: NodeProcess
    ports: Ports


# ---------------------------------------------------------------------------------------- DICOM builders
def make_image(
    modality: str = "CR",
    *,
    body_part: str | None = "CHEST",
    view_position: str | None = "PA",
    manufacturer: str = "cxr-test",
    study_uid: str | None = None,
    patient_name: str = "Test^Patient",
    patient_id: str = "IT-0001",
    charset: str | None = None,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> pydicom.Dataset:
    """A small uncompressed MONOCHROME2 image (CR, DX or CT) with the attributes routing looks at."""
    sop_class = {"CR": CR_IMAGE_STORAGE, "DX": "1.2.840.10008.5.1.4.1.1.1.1", "CT": CT_IMAGE_STORAGE}[modality]
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = "IT" + str(seed)
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"] if modality != "CT" else ""
    if modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelSpacing = [0.5, 0.5]
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def write(ds: pydicom.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
