"""How long a modality waits to open an association with ``cxr-node serve``, store one image and release.

A node is started (``NodeProcess``, shipped bundles, CPU) from this tree and, with ``--baseline-tree
DIR``, one from another source tree; then ``--n`` times, one second apart (the node idle in between),
a pynetdicom SCU (``TCP_NODELAY``) times A-ASSOCIATE, one C-STORE of a 1024² RSNA-style JPEG SC and
A-RELEASE. The two nodes take turns image by image. Reported: median and max ms per step.

    python bench/association_setup.py --n 8 [--baseline-tree DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import free_port, hardware, rsna_phantoms  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
from integration_helpers import NodeProcess  # noqa: E402

from dicom_node.testing.local_orthanc import PUSHER_AET  # noqa: E402


def one(port: int, ds: object) -> tuple[float, float, float]:
    """(associate, C-STORE, release) ms of one image."""
    from pynetdicom import AE

    from dicom_node.transport.tcp_options import NODELAY_HANDLERS

    ae = AE(ae_title=PUSHER_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE", evt_handlers=NODELAY_HANDLERS)
    t1 = time.perf_counter()
    if not assoc.is_established:
        raise RuntimeError(f"no association with the node on port {port}")
    status = assoc.send_c_store(ds)
    t2 = time.perf_counter()
    assoc.release()
    t3 = time.perf_counter()
    if int(status.Status) != 0:
        raise RuntimeError(f"C-STORE answered {status!r}")
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    import pydicom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--baseline-tree", type=Path, default=None)
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    args = p.parse_args(argv)
    files = rsna_phantoms(args.scratch / "phantoms", args.n, seed=41, size=1024)
    trees = {"this tree": {}}
    if args.baseline_tree:
        trees["baseline"] = {"PYTHONPATH": str(args.baseline_tree.resolve())}
    work = Path(tempfile.mkdtemp(prefix="assoc-", dir=args.scratch))
    nodes = {name: NodeProcess(workdir=work / str(i), port=free_port(), orthanc_dicom_port=free_port(),
                               env_overrides={"CXR_NODE_DEVICE": "cpu", **env})
             for i, (name, env) in enumerate(trees.items())}  # fmt: skip
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in nodes}
    load0 = hardware()["load_1m"]
    try:
        for node in nodes.values():
            node.start(timeout=300)
        for f in files:
            ds = pydicom.dcmread(f)
            for name, node in nodes.items():
                time.sleep(1.0)
                times[name].append(one(node.port, ds))
    finally:
        for node in nodes.values():
            node.stop()
    hw = hardware()
    print(
        f"{hw['cpu']}, {hw['cores']} cores; load {load0:.2f} → {hw['load_1m']:.2f}; {args.n} images per node\n"
    )
    print("| node | associate ms, median (max) | C-STORE ms | release ms |\n|---|---:|---:|---:|")
    for name, rows in times.items():
        cells = [f"{statistics.median(c):.1f} ({max(c):.1f})" for c in zip(*rows, strict=True)]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
