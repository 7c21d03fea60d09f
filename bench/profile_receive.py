"""Where the SCP's time goes per instance: wall-clock per stage of ``Receiver._store``.

Runs the node's ``Receiver`` in-process (spool + journal in a temporary folder), pushes the
benchmark phantoms with one dcmtk storescu association (``TCP_NODELAY=1``) and prints the mean
milliseconds per instance of: the whole C-STORE handler, ``Spool.store_incoming`` (write + fsync +
rename + folder fsync), every ``os.fsync`` (spool file and folder), the folder fsync alone, the
journal insert + commit, and routing (``RoutingRules.decide``, including the header parse).

    python bench/profile_receive.py --kind rsna|dx [--n 64] [--memory-receive]

With chunked receive (the default) the header parse for routing is a separate ``dcmread`` of the
staged file (timed as "header dcmread"); with ``--memory-receive`` it happens inside routing.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DCMTK_ENV, dx_phantoms, rsna_phantoms  # noqa: E402

import dicom_node.scp.receive as receive_mod  # noqa: E402
import dicom_node.scp.routing as routing  # noqa: E402
import dicom_node.storage.spool as spool_mod  # noqa: E402
from dicom_node.scp.receive import Receiver  # noqa: E402
from dicom_node.settings import NodeSettings  # noqa: E402
from dicom_node.storage.journal import Journal  # noqa: E402
from dicom_node.storage.spool import Spool  # noqa: E402

TOTALS: collections.Counter[str] = collections.Counter()
_LOCK = threading.Lock()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped so that its wall time adds to ``TOTALS[name]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                TOTALS[name] += time.perf_counter() - t0

    return wrapper


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["rsna", "dx"], default="rsna")
    p.add_argument("--n", type=int, default=None, help="instances (default 64 rsna, 16 dx)")
    p.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "cxr-bench")
    p.add_argument("--memory-receive", action="store_true", help="Receiver(chunked_receive=False)")
    args = p.parse_args(argv)
    n = args.n or (64 if args.kind == "rsna" else 16)
    cache = args.scratch / "phantoms"
    if args.kind == "rsna":
        files, option = rsna_phantoms(cache, n, seed=11, size=1024), "-xy"
    else:
        files, option = dx_phantoms(cache, n, seed=11), "-xe"

    os.fsync = timed("os.fsync (file + folder)", os.fsync)  # type: ignore[assignment]
    spool_mod.fsync_dir = timed("folder fsync", spool_mod.fsync_dir)
    receive_mod.pydicom.dcmread = timed("header dcmread (chunked)", receive_mod.pydicom.dcmread)
    routing.RoutingRules.decide = timed("routing incl. header parse", routing.RoutingRules.decide)  # type: ignore[method-assign]
    work = Path(tempfile.mkdtemp(prefix="profile-receive-", dir=args.scratch))
    try:
        settings = NodeSettings(port=0, spool_dir=work / "spool", disk_reserve_mb=0, http_port=0)
        spool = Spool(settings.spool_dir)
        journal = Journal(settings.journal_path)
        spool.store_incoming = timed("Spool.store_incoming", spool.store_incoming)  # type: ignore[method-assign]
        journal.add_job = timed("Journal.add_job (insert + commit)", journal.add_job)  # type: ignore[method-assign]
        receiver = Receiver(settings, spool, journal, chunked_receive=not args.memory_receive)
        receiver._store = timed("C-STORE handler (total)", receiver._store)  # type: ignore[method-assign]
        port = receiver.start()
        t0 = time.perf_counter()
        subprocess.run(["storescu", option, "-aec", "AINODE", "127.0.0.1", str(port), *map(str, files)],
                       env=DCMTK_ENV, check=True, capture_output=True, timeout=600)  # fmt: skip
        wall = time.perf_counter() - t0
        receiver.stop(5)
        journal.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.kind}: {n} instances over one association in {wall:.2f} s = {n / wall:.1f} instances/s "
          f"({wall / n * 1000:.1f} ms per instance wall)")  # fmt: skip
    for name, total in TOTALS.most_common():
        print(f"  {name:38s} {total / n * 1000:7.2f} ms/instance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
