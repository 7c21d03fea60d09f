"""Open associations with a node the way Orthanc does when it forwards a study: the presentation
contexts Orthanc 1.10 proposes (``bench/orthanc_contexts.json``, 127 contexts), one C-STORE, release.

Orthanc's routing plug-in forwards each stable study as one ``/modalities/<node>/store`` job, one
association per study (a chest X-ray study holds one to three images), and Orthanc proposes these
127 contexts whatever the study holds. ``bench/stage_io.py`` (``association_ms``) runs this in a child
process, so that only the node's side of each association counts.

    python bench/orthanc_like_scu.py send PORT N FILE [--called AINODE] [--calling BENCHSCU]
    python bench/orthanc_like_scu.py capture [--out bench/orthanc_contexts.json]

``capture`` starts a real Orthanc on loopback (``dicom_node.testing.local_orthanc``), lets it forward
one RSNA-style phantom to a pynetdicom listener, and writes the contexts it proposed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTEXTS = HERE / "orthanc_contexts.json"


def load_contexts(path: Path = CONTEXTS) -> list[tuple[str, list[str]]]:
    """The (abstract syntax, transfer syntaxes) Orthanc proposed, in its order."""
    data = json.loads(path.read_text())
    contexts = [(str(a), [str(t) for t in ts]) for a, ts in data["contexts"]]
    if not contexts or any(not ts for _, ts in contexts):
        raise ValueError(f"{path}: no contexts, or a context without transfer syntaxes")
    return contexts


def send(port: int, n: int, file: Path, *, calling: str, called: str) -> None:
    """``n`` associations, each one C-STORE of ``file``; raises on any refusal or failure status."""
    from common import pause_for_certain
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    ds = dcmread(file)
    ae = AE(ae_title=calling)
    ae.requested_contexts = [build_context(a, ts) for a, ts in load_contexts()]
    for i in range(n):
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            raise RuntimeError(f"association {i} was not accepted")
        pause_for_certain(assoc)
        status = assoc.send_c_store(ds)
        assoc.release()
        if getattr(status, "Status", None) != 0:
            raise RuntimeError(f"association {i}: C-STORE status {status!r}")


def capture(out: Path) -> int:
    """Have a real Orthanc forward a phantom to a listener; write the contexts it proposed to ``out``."""
    sys.path.insert(0, str(HERE))
    from common import rsna_phantoms
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.testing.local_orthanc import LocalOrthanc, free_port, wait_until

    proposed: list[list[tuple[str, list[str]]]] = []

    def on_requested(event: evt.Event) -> None:
        proposed.append([(str(c.abstract_syntax), [str(t) for t in c.transfer_syntax])
                         for c in event.assoc.requestor.requested_contexts])  # fmt: skip

    ae = AE(ae_title="AINODE")
    ae.add_supported_context(Verification)
    syntaxes = ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = LocalOrthanc(Path(tmp) / "orthanc", free_port(), free_port(), port, stable_age_s=1)
        orthanc.start()
        try:
            phantom = rsna_phantoms(Path(tmp) / "phantoms", 1, seed=5)[0]
            orthanc.upload(phantom.read_bytes())
            wait_until(lambda: proposed, 60, what="Orthanc forwarding the phantom")
        finally:
            orthanc.stop()
            server.shutdown()
    version = "Orthanc " + _orthanc_version()
    lines = ",\n  ".join(json.dumps(c) for c in proposed[0])  # one context per line
    head = json.dumps({"captured_from": version, "captured_at": time.strftime("%Y-%m-%d")})[:-1]
    out.write_text(f'{head}, "contexts": [\n  {lines}\n]}}\n')
    print(f"{out}: {len(proposed[0])} contexts proposed by {version}")
    return 0


def _orthanc_version() -> str:
    import subprocess

    from dicom_node.testing.local_orthanc import orthanc_binary

    binary = orthanc_binary() or "Orthanc"
    first = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return first[0].split()[-1] if first else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send")
    s.add_argument("port", type=int)
    s.add_argument("n", type=int)
    s.add_argument("file", type=Path)
    s.add_argument("--calling", default="BENCHSCU")
    s.add_argument("--called", default="AINODE")
    c = sub.add_parser("capture")
    c.add_argument("--out", type=Path, default=CONTEXTS)
    args = p.parse_args(argv)
    if args.command == "capture":
        return capture(args.out)
    send(args.port, args.n, args.file, calling=args.calling, called=args.called)
    return 0


if __name__ == "__main__":
    sys.exit(main())
