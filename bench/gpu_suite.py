"""One run on a GPU box answers issue 15 point 5: model-only and end to end, shipped and seed-size
models, fp16 and fp32, a batch sweep, GPU memory, paced latency; writes ``gpu_suite.json`` and
``gpu_suite.md`` into ``--out`` (each step is saved as soon as it ends, so a run cut short keeps
what it measured; a failed step is recorded with its error and the others still run).

Steps (``--quick``: smaller N and sweeps, to check the plumbing, e.g. on a CPU with ``--device cpu``):

1. host: GPU name, memory, driver (``nvidia-smi``), torch/CUDA versions, CPU cores;
2. seed-size bundles written with random weights (``bench/seed_bundles.py``);
3. model-only, both bundle sets: classifier and detector alone at batch 1..64 in fp16 autocast
   and fp32, images/s, median batch ms and peak GPU memory (``torch.cuda.max_memory_allocated``);
4. end to end (``bench/end_to_end.py``), both bundle sets: N RSNA-style 1024² images pushed by 4
   senders into ``cxr-node serve --device cuda`` until SR + SC are stored in Orthanc, batch 8 and 32,
   with its model-only ratio measured in the same run (the issue's aim: ≥ 90 % with seed-size
   models), node CPU per image and peak GPU memory (nvidia-smi, whole device);
5. paced latency at 1 image/s (``end_to_end.py --paced``), both bundle sets, batch 8.

    python bench/gpu_suite.py --out "$OUT"                   # on the GPU box (about 6-8 minutes)
    python bench/gpu_suite.py --out /tmp/gs --device cpu --quick   # plumbing check on a CPU

On the GPU machine the workplace's ``device`` tool lends (no virtualenv of ours, no Orthanc, no dcmtk, no
network), ``bench/device_kit.sh`` prepares the wheels to carry and prints the command; the end-to-end and
paced steps then use pynetdicom as sender and receiver (``--peers python``, ``bench/python_peers.py``, the
default where Orthanc or storescu is missing); BENCHMARKS.md section 5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, hardware  # noqa: E402


def host_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {**hardware(), "cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
                            "cuda": torch.version.cuda}  # fmt: skip
    if shutil.which("nvidia-smi"):
        q = "name,memory.total,driver_version"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip()  # fmt: skip
        info["nvidia_smi"] = out
    return info


def model_only(bundles: Path, device: str, batches: Sequence[int], iterations: int) -> list[dict[str, Any]]:
    """Both models of ``bundles`` alone, every batch size, fp16 autocast and fp32."""
    import torch
    from model_throughput import time_model

    from models.inference.bundle_loader import load_bundle
    from models.inference.engine import (
        DEFAULT_CLASSIFICATION_BUNDLE,
        DEFAULT_DETECTION_BUNDLE,
        resolve_device,
    )

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(2)
    rows = []
    for name in (DEFAULT_CLASSIFICATION_BUNDLE, DEFAULT_DETECTION_BUNDLE):
        bundle = load_bundle(bundles / name, device=dev)
        for fp16 in (True, False) if cuda else (False,):
            for batch in batches:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(dev)
                try:
                    row = time_model(bundle, batch, iterations=iterations, warmup=2, device=dev, fp16=fp16)
                except torch.cuda.OutOfMemoryError as exc:  # a batch too large for the card: say so, go on
                    row = {"model": name, "batch_size": batch, "precision": "fp16" if fp16 else "fp32",
                           "error": f"out of memory: {exc}"[:300]}  # fmt: skip
                if cuda:
                    row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
                rows.append(row)
        del bundle
    return rows


def default_peers() -> str:
    """``dcmtk-orthanc`` where Debian's Orthanc and dcmtk's storescu are installed, else ``python``
    (``bench/python_peers.py``: the GPU machine the workplace lends has neither)."""
    from dicom_node.testing.local_orthanc import orthanc_binary

    return "dcmtk-orthanc" if orthanc_binary() and shutil.which("storescu") else "python"


def end_to_end(bundles: Path, device: str, n: int, batches: Sequence[int], senders: int, extra_env: Sequence[str],
               scratch: Path, peers: str) -> dict[str, Any]:  # fmt: skip
    import end_to_end as e2e

    args = argparse.Namespace(scratch=scratch, n=n, size=1024, warmup=8, senders=[senders], default_batch=batches[0],
                              default_senders=senders, batch_sizes=list(batches), variants=["current"], repeats=1,
                              device=device, model_images=max(32, 4 * max(batches)), timeout=900.0,
                              env=[f"CXR_NODE_BUNDLES_DIR={bundles}", *extra_env], peers=peers)  # fmt: skip
    return e2e.run(args)


def paced(bundles: Path, device: str, n: int, extra_env: Sequence[str], scratch: Path, peers: str) -> dict[str, Any]:
    import end_to_end as e2e

    args = argparse.Namespace(scratch=scratch, n=n, size=1024, warmup=4, batch_sizes=[8], paced=1.0, repeats=1,
                              device=device, timeout=900.0,
                              env=[f"CXR_NODE_BUNDLES_DIR={bundles}", *extra_env], peers=peers)  # fmt: skip
    return e2e.run_paced(args)


def to_markdown(report: dict[str, Any]) -> str:
    import end_to_end as e2e

    host = report.get("host", {})
    lines = [f"# GPU suite ({report.get('started')}, {report.get('seconds', 0):.0f} s)", "",
             f"Host: {host.get('nvidia_smi') or host.get('gpu') or 'no GPU'}; CPU {host.get('cpu')}, "
             f"{host.get('cores')} cores; torch {host.get('torch')} (CUDA {host.get('cuda')}); device "
             f"{report.get('device')}; quick={report.get('quick')}; sender and receiver of the end-to-end steps: "
             f"{report.get('peers', 'dcmtk-orthanc')}.", ""]  # fmt: skip
    for key, title in (("model_only_shipped", "Model-only, shipped bundles"),
                       ("model_only_seed", "Model-only, seed-size bundles (random weights)")):  # fmt: skip
        rows = report.get(key)
        if isinstance(rows, list):
            lines += [f"## {title}", "", "| model | input | precision | batch | images/s | batch ms | peak GPU MiB |",
                      "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
            for r in rows:
                if "error" in r:
                    lines.append(f"| {r['model']} | | {r['precision']} | {r['batch_size']} | {r['error']} | | |")
                    continue
                gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "n/a"
                lines.append(f"| {r['model']} | {r['image_size'][0]}² | {r['precision']} | {r['batch_size']} "
                             f"| {r['images_per_s']:.1f} | {r['batch_ms_median']:.1f} | {gpu} |")  # fmt: skip
            lines.append("")
    for key, title in (("e2e_shipped", "End to end, shipped bundles"), ("e2e_seed", "End to end, seed-size bundles"),
                       ("paced_shipped", "Paced latency, shipped bundles"),
                       ("paced_seed", "Paced latency, seed-size bundles")):  # fmt: skip
        rep = report.get(key)
        if isinstance(rep, dict) and "rows" in rep:
            render = e2e.paced_markdown if key.startswith("paced") else e2e.to_markdown
            lines += [f"## {title}", "", render(rep), ""]
    for key, err in report.get("errors", {}).items():
        lines += [f"## {key}: failed", "", "```", err[-3000:], "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_suite.json / gpu_suite.md")
    p.add_argument("--device", default="cuda", help="cuda (default) | cpu (plumbing check)")
    p.add_argument("--quick", action="store_true", help="small N and sweeps")
    p.add_argument("--scratch", type=Path, default=None, help="phantoms and work folders (default: OUT/../scratch)")
    p.add_argument("--skip", nargs="*", default=[], help="steps to skip: model_only e2e paced")
    p.add_argument("--peers", choices=["dcmtk-orthanc", "python"], default=None,
                   help="end to end: storescu + Orthanc, or pynetdicom for both (default: the first where "
                        "installed, else python)")  # fmt: skip
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.scratch or Path(os.environ.get("TMPDIR", "/tmp")) / "cxr-gpu-suite"
    scratch.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    cores = os.cpu_count() or 2
    # a GPU box has more cores than the 2-core VM: give result building and decoding some of them
    extra_env = [f"CXR_NODE_RESULT_WORKERS={max(2, min(8, cores // 2))}", f"CXR_NODE_DECODE_WORKERS={min(4, cores)}"]
    peers = args.peers or default_peers()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": args.device,
                              "quick": quick, "node_env": extra_env, "peers": peers, "errors": {}}  # fmt: skip
    t0 = time.perf_counter()

    def save() -> None:
        report["seconds"] = time.perf_counter() - t0
        (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "gpu_suite.md").write_text(to_markdown(report))

    def step(key: str, fn: Callable[[], Any]) -> Any:
        print(f"[gpu_suite] {key} ...", file=sys.stderr, flush=True)
        s0 = time.perf_counter()
        try:
            report[key] = fn()
        except Exception:
            report["errors"][key] = traceback.format_exc()
            print(report["errors"][key], file=sys.stderr, flush=True)
        print(f"[gpu_suite] {key} done in {time.perf_counter() - s0:.0f} s", file=sys.stderr, flush=True)
        save()
        return report.get(key)

    step("host", host_info)
    if args.device.startswith("cuda") and not report.get("host", {}).get("cuda_available"):
        report["errors"]["host"] = "CUDA is not available: nothing measured"
        save()
        return 1
    from seed_bundles import write_seed_bundles

    seed_dir = scratch / "seed-bundles"
    step("seed_bundles", lambda: [str(x) for x in write_seed_bundles(seed_dir)])
    sets = {"shipped": REPO / "monai_bundles", "seed": seed_dir}
    batches = [1, 8] if quick else [1, 4, 8, 16, 32, 64]
    if "model_only" not in args.skip:
        for name, path in sets.items():
            step(f"model_only_{name}", lambda path=path: model_only(path, args.device, batches, 2 if quick else 10))
    if "e2e" not in args.skip:
        n = 16 if quick else 128
        e2e_batches = [8] if quick else [8, 32]
        for name, path in sets.items():
            step(f"e2e_{name}", lambda path=path: end_to_end(path, args.device, n, e2e_batches, 4, extra_env, scratch,
                                                             peers))  # fmt: skip
    if "paced" not in args.skip:
        for name, path in sets.items():
            step(f"paced_{name}", lambda path=path: paced(path, args.device, 8 if quick else 30, extra_env, scratch,
                                                          peers))  # fmt: skip
    save()
    print(to_markdown(report))
    return 0 if not report["errors"] else 2


if __name__ == "__main__":
    sys.exit(main())
