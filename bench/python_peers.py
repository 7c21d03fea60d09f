"""Pure-Python stand-ins for Orthanc and dcmtk's storescu in ``bench/end_to_end.py`` (``--peers python``),
for a machine that has neither: the GPU machine the workplace lends has no Debian packages and no network
(BENCHMARKS.md section 5), while pynetdicom travels among its wheels.

* :class:`PythonStore`, in Orthanc's place: a pynetdicom Storage SCP in its own process (so its CPU is
  counted apart from the node's, as Orthanc's is) that accepts every storage SOP class in every transfer
  syntax, writes each instance to a file (written whole, then renamed) and answers success; the harness
  counts the files and empties the folder between runs.
* :func:`push_python`, in storescu's place: ``k`` processes, each sending its share of the files over one
  association (pynetdicom), with :func:`common.push_parallel`'s result.

The node and what it measures are the same as with Orthanc; what differs is the cost of the peers (a
pynetdicom SCP answers a C-STORE with more CPU than Orthanc's C++ does, on its own cores).

    python bench/python_peers.py store --port P --dir D [--ae ORTHANC]
    python bench/python_peers.py push --port P --calling C --called A FILE...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from common import REPO, PushResult, pause_for_certain, run_senders, split_round_robin  # noqa: E402

#: Orthanc's ``MaximumPduLength`` in the benchmarks' configuration, and the node's default
MAX_PDU = 131072


def _store_ae(ae_title: str):  # noqa: ANN202 - pynetdicom's AE
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def serve_store(port: int, folder: Path, ae_title: str) -> None:
    """Run the Storage SCP on 127.0.0.1:``port`` until killed, writing each instance to ``folder``."""
    from pynetdicom import evt

    folder.mkdir(parents=True, exist_ok=True)

    def on_store(event) -> int:  # noqa: ANN001 - pynetdicom's Event
        uid = str(event.request.AffectedSOPInstanceUID)
        tmp = folder / f".{uid}.part"
        with tmp.open("wb") as f:
            f.write(event.encoded_dataset())
        os.replace(tmp, folder / f"{uid}.dcm")
        return 0x0000

    _store_ae(ae_title).start_server(
        ("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )


def push_files(port: int, files: Sequence[Path], *, calling: str, called: str) -> int:
    """Send ``files`` over one association; the number of C-STOREs that did not succeed (all, if the
    association was refused)."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = MAX_PDU
    for sop_class, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        print(f"E: association with {called} at 127.0.0.1:{port} refused or aborted", flush=True)
        return len(files)
    failed = 0
    try:
        for path, ds in zip(files, datasets, strict=True):
            pause_for_certain(assoc)
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0x0000:
                failed += 1
                print(f"E: C-STORE of {path.name} answered {status!r}", flush=True)
    finally:
        assoc.release()
    return failed


def push_python(
    files: Sequence[Path], port: int, k: int, *, calling: str, called: str, timeout: float = 600.0
) -> PushResult:
    """:func:`common.push_parallel` with pynetdicom instead of storescu: ``files`` split round-robin over
    ``k`` processes, one association each."""
    me = [sys.executable, str(Path(__file__).resolve()), "push", "--port", str(port), "--calling", calling]
    commands = [[*me, "--called", called, *map(str, chunk)] for chunk in split_round_robin(files, k)]
    return run_senders(commands, files, env=_env(), timeout=timeout)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class PythonStore:
    """:func:`serve_store` as a subprocess, with what ``end_to_end.py`` asks of its Orthanc: ``start()``,
    ``stop()``, ``proc`` (its pid is measured), ``dicom_port``, :meth:`count` and :meth:`wipe`."""

    workdir: Path
    dicom_port: int
    ae_title: str = "ORTHANC"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def folder(self) -> Path:
        return self.workdir / "stored"

    def start(self, timeout: float = 60.0) -> None:
        from dicom_node.testing.local_orthanc import port_open, wait_until

        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "store.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "store", "--port", str(self.dicom_port), "--dir",
             str(self.folder), "--ae", self.ae_title],
            stdout=log, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
        log.close()
        wait_until(lambda: self.proc is not None and self.proc.poll() is None and port_open(self.dicom_port),
                   timeout, interval=0.1, what="the Python storage SCP to listen")  # fmt: skip

    def stop(self) -> None:
        from dicom_node.testing.local_orthanc import terminate

        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def count(self) -> int:
        """Instances stored (files written whole)."""
        return sum(1 for _ in self.folder.glob("*.dcm")) if self.folder.exists() else 0

    def wipe(self) -> None:
        for path in self.folder.glob("*.dcm"):
            path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("store", help="Storage SCP writing each instance to --dir")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--dir", type=Path, required=True)
    s.add_argument("--ae", default="ORTHANC")
    q = sub.add_parser("push", help="send FILEs over one association")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--calling", required=True)
    q.add_argument("--called", required=True)
    q.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    if args.command == "store":
        serve_store(args.port, args.dir, args.ae)
        return 0
    return 1 if push_files(args.port, args.files, calling=args.calling, called=args.called) else 0


if __name__ == "__main__":
    sys.exit(main())
