"""End-to-end benchmark: RSNA-style CXRs pushed into the node until the last SR + SC is stored in a real Orthanc.

One Orthanc (Debian's binary, loopback, temporary storage, auto-forward off) receives the
results; for every configuration a fresh ``cxr-node serve`` subprocess (H6's ``NodeProcess``,
JSON logs) is started, ``N`` phantoms are pushed with ``k`` parallel dcmtk storescu
associations, and the clock stops when Orthanc holds the 2·N result instances (one SR and
one SC per image). Reported per configuration (median of ``--repeats`` runs):

* images/s from the first C-STORE to the last result stored in Orthanc;
* p50/p95/p99 latency per instance: journal ``received_at`` (the row is committed just before
  the C-STORE success response) to the node's ``job_delivered`` log event (Orthanc answered
  success for both SR and SC), i.e. the ``ms`` field of that event;
* peak RSS of the node process (``VmHWM``) and peak GPU memory (nvidia-smi, whole device;
  n/a on CPU);
* the models' own throughput *inside the node during the run*: images / (sum of the engine's
  per-batch classify + detect time, from its DEBUG "batch done" log lines), and the ratio
  end-to-end / that (= the fraction of the run the models were busy) - robust to host load;
* model-only throughput of both bundles chained (1 / (1/cls + 1/det)) at the same batch size
  and device, measured in this process with ``bench/model_throughput.time_model`` right after
  each end-to-end run (same host load); the ratio is the median of the per-run ratios.

    python bench/end_to_end.py --n 64 --senders 1 2 4 --batch-sizes 1 4 16 32 --repeats 3 --device cpu

Paced-latency mode (``--paced RATE``): instead of a burst, one modality sends one image every
1/RATE s, each over its own association (``bench/paced.py``); latency per image runs from its
association request to the node's ``job_delivered`` line (Orthanc answered success for SR and SC), and
p50/p95/p99/max are reported per batch size, with the node's CPU ms per image and the host load:

    python bench/end_to_end.py --paced 1 --n 60 --batch-sizes 8 --warmup 4 --repeats 1 [--baseline-tree DIR]

``--baseline-tree DIR`` runs a second node from another source tree (``git archive <commit> | tar -x
-C DIR``), interleaved with this one run by run: before/after under the same host load.

``--device cuda`` runs the same measurement on a GPU box. ``--peers python`` puts pynetdicom in the places
of Orthanc and storescu (``bench/python_peers.py``), for a machine that has neither (the GPU machine the
workplace lends); the "Orthanc" CPU column is then that receiver's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    REPO,
    CpuMeter,
    PushResult,
    Sampler,
    add_output_arguments,
    child_pids,
    emit_report,
    free_port,
    gpu_memory_used_mb,
    hardware,
    median,
    peak_rss_bytes,
    percentile,
    push_parallel,
    rsna_phantoms,
)

sys.path.insert(0, str(REPO / "tests" / "integration"))
from integration_helpers import NodeProcess  # noqa: E402
from python_peers import PythonStore, push_python  # noqa: E402

from dicom_node.testing.local_orthanc import ORTHANC_AET, PUSHER_AET, LocalOrthanc, echo_ok, wait_until  # noqa: E402

#: what receives the node's results: Debian's Orthanc, or (``--peers python``) a pynetdicom Storage SCP
Pacs = LocalOrthanc | PythonStore

#: variants: extra environment of the node subprocess (earlier before/after patches: git history of bench/ab_patches/)
VARIANTS: dict[str, dict[str, str]] = {
    "current": {},
    "torch-1-thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}

#: environment of the Orthanc a variant delivers to (variants with the same one share an Orthanc)
ORTHANC_ENV: dict[str, dict[str, str]] = {}


def orthanc_count(orthanc: Pacs) -> int:
    """Number of instances Orthanc (or the Python receiver) stores."""
    if isinstance(orthanc, PythonStore):
        return orthanc.count()
    return int(orthanc.get("/statistics")["CountInstances"])


def wipe(orthanc: Pacs) -> None:
    """Delete everything in Orthanc: result UIDs are deterministic, so a repeated run over the
    same phantoms would only overwrite the previous run's instances (the count would not grow)."""
    if isinstance(orthanc, PythonStore):
        orthanc.wipe()
    else:
        for pid in orthanc.get("/patients"):
            orthanc.request("DELETE", f"/patients/{pid}").raise_for_status()
    if orthanc_count(orthanc):
        raise RuntimeError(f"Orthanc still holds {orthanc_count(orthanc)} instances after the wipe")


def new_pacs(peers: str, workdir: Path, env: dict[str, str] | None = None) -> Pacs:
    """The receiver of the node's results for ``--peers`` (``dcmtk-orthanc`` or ``python``)."""
    if peers == "python":
        return PythonStore(workdir=workdir, dicom_port=free_port(), ae_title=ORTHANC_AET)
    return LocalOrthanc(workdir=workdir, http_port=free_port(), dicom_port=free_port(), node_port=free_port(),
                        auto_forward=False, env_overrides=env or {})  # fmt: skip


def push(orthanc: Pacs, files: Sequence[Path], port: int, senders: int) -> PushResult:
    """``files`` into the node over ``senders`` associations: storescu, or pynetdicom beside the Python receiver."""
    if isinstance(orthanc, PythonStore):
        return push_python(files, port, senders, calling=PUSHER_AET, called="AINODE")
    return push_parallel(files, port, senders, calling=PUSHER_AET, called="AINODE")


def node_process(orthanc: Pacs, workdir: Path, env: dict[str, str]) -> NodeProcess:
    """A node delivering to ``orthanc`` (its readiness checked with pynetdicom beside the Python receiver)."""
    port = free_port()
    ready = (lambda: echo_ok(port, calling=ORTHANC_AET)) if isinstance(orthanc, PythonStore) else None
    return NodeProcess(workdir=workdir, port=port, orthanc_dicom_port=orthanc.dicom_port, env_overrides=env,
                       ready_check=ready)  # fmt: skip


def one_run(orthanc: Pacs, files: Sequence[Path], *, senders: int, batch: int, device: str,
            workdir: Path, timeout: float, extra_env: dict[str, str],
            warmup: Sequence[Path] = ()) -> dict[str, Any]:  # fmt: skip
    """Start a node, push ``files`` over ``senders`` associations, wait for 2·N results in Orthanc.

    ``warmup`` images (other UIDs) go through the node first and are waited for, then Orthanc is
    emptied: the clock then measures a node in its steady state (models warm, result processes
    started), not its first seconds."""
    node = node_process(orthanc, workdir, {"CXR_NODE_BATCH_SIZE": str(batch), "CXR_NODE_DEVICE": device,
                                           "CXR_NODE_HTTP_PORT": "0", "CXR_NODE_LOG_LEVEL": "DEBUG",
                                           "CXR_NODE_DECODE_WORKERS": "2", **extra_env})  # fmt: skip
    wipe(orthanc)
    base = 0
    want = 2 * len(files)
    node.start(timeout=300)
    try:
        assert node.proc is not None
        pid = node.proc.pid
        if warmup:
            pushed = push(orthanc, warmup, node.port, senders)
            if pushed.failures or any(pushed.returncodes):
                raise RuntimeError(f"warm-up push failed: rc {pushed.returncodes}")
            wait_until(lambda: orthanc_count(orthanc) >= 2 * len(warmup), timeout, interval=0.1,
                       what="the warm-up results in Orthanc")  # fmt: skip
            wipe(orthanc)
        warm_batches = sum(1 for r in node.log_records() if r.get("msg") == "batch done" and "classify_ms" in r)
        timed = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert orthanc.proc is not None
        opid = orthanc.proc.pid
        cpu = CpuMeter({"node": lambda: [pid], "result processes": lambda: child_pids(pid),
                        "orthanc": lambda: [opid]})  # fmt: skip
        with Sampler(lambda: gpu_memory_used_mb() or 0.0, 0.5) as gpu:
            cpu.start()
            t0 = time.perf_counter()
            pushed = push(orthanc, files, node.port, senders)
            t_pushed = time.perf_counter() - t0
            if pushed.failures or any(pushed.returncodes):
                raise RuntimeError(f"push failed: rc {pushed.returncodes}: {pushed.outputs[0][-1500:]!r}")
            wait_until(lambda: orthanc_count(orthanc) >= want, timeout, interval=0.1,
                       what=f"{want - base} results in Orthanc")  # fmt: skip
            seconds = time.perf_counter() - t0
            cpu_s = cpu.stop()
        rss = peak_rss_bytes(pid)
        # the job_delivered line is written right after the last outbox row is marked delivered
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lat = [float(r["ms"]) for r in node.log_records()
                   if r.get("event") == "job_delivered" and r.get("sop_instance_uid") in timed]  # fmt: skip
            if len(lat) >= len(files):
                break
            time.sleep(0.2)
        got = orthanc_count(orthanc) - base
        # time the models actually ran inside the node (engine's DEBUG "batch done" lines)
        batches = [r for r in node.log_records() if r.get("msg") == "batch done" and "classify_ms" in r]
        batches = batches[warm_batches:]  # the warm-up's batches are not timed
        model_busy_s = sum(float(r["classify_ms"]) + float(r["detect_ms"]) for r in batches) / 1000.0
        batched = sum(int(r["batch_size"]) for r in batches)
    finally:
        node.stop()
    if len(lat) != len(files) or got != 2 * len(files):
        raise RuntimeError(f"{len(lat)} job_delivered lines and {got} results for {len(files)} images")
    return {
        "seconds": seconds,
        "push_seconds": t_pushed,
        "images_s": len(files) / seconds,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "peak_rss_mb": rss / 2**20,
        "peak_gpu_mb": gpu.peak if gpu_memory_used_mb() is not None else None,
        "in_node_model_images_s": batched / model_busy_s if model_busy_s else None,
        "model_busy_fraction": model_busy_s / seconds,
        "mean_batch": batched / len(batches) if batches else None,
        # CPU ms per image of each process group over the timed window (the models run in "node")
        **{f"cpu_ms_{k.replace(' ', '_')}": 1000 * v / len(files) for k, v in cpu_s.items()},
    }


def paced_run(orthanc: Pacs, files: Sequence[Path], *, rate: float, batch: int, device: str,
              workdir: Path, timeout: float, extra_env: dict[str, str],
              warmup: Sequence[Path] = ()) -> dict[str, Any]:  # fmt: skip
    """Start a node, deliver ``warmup`` images, then push ``files`` at ``rate`` images/s
    (``bench/paced.py``) and wait for 2·N results in Orthanc: latency per image, CPU per image."""
    from paced import PacedPush, latencies_s, latency_summary

    node = node_process(orthanc, workdir, {"CXR_NODE_BATCH_SIZE": str(batch), "CXR_NODE_DEVICE": device,
                                           "CXR_NODE_HTTP_PORT": "0", "CXR_NODE_DECODE_WORKERS": "2", **extra_env})  # fmt: skip
    wipe(orthanc)
    node.start(timeout=300)
    try:
        assert node.proc is not None and orthanc.proc is not None
        pid, opid = node.proc.pid, orthanc.proc.pid
        if warmup:
            PacedPush(warmup, node.port, rate, calling=PUSHER_AET, called="AINODE").run()
            wait_until(lambda: orthanc_count(orthanc) >= 2 * len(warmup), timeout, interval=0.1,
                       what="the warm-up results in Orthanc")  # fmt: skip
            wipe(orthanc)
        cpu = CpuMeter({"node": lambda: [pid], "result processes": lambda: child_pids(pid),
                        "orthanc": lambda: [opid]}).start()  # fmt: skip
        load0 = hardware()["load_1m"]
        push = PacedPush(files, node.port, rate, calling=PUSHER_AET, called="AINODE")
        push.run()
        wait_until(lambda: orthanc_count(orthanc) >= 2 * len(files), timeout, interval=0.1,
                   what=f"{2 * len(files)} results in Orthanc")  # fmt: skip
        cpu_s = cpu.stop()
        deadline = time.monotonic() + 10
        while True:  # the job_delivered line follows the last outbox row's commit
            try:
                lat = latencies_s(push, node.log_records())
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rss = peak_rss_bytes(pid)
    finally:
        node.stop()
    return {
        "rate": rate,
        **latency_summary(lat),
        "c_store_ack_p50_ms": median(push.acked_ms),
        "peak_rss_mb": rss / 2**20,
        "load_1m_before_after": [load0, hardware()["load_1m"]],
        **{f"cpu_ms_{k.replace(' ', '_')}": 1000 * v / len(files) for k, v in cpu_s.items()},
    }


def run_paced(args: argparse.Namespace) -> dict[str, Any]:
    """``--paced``: latency at a fixed arrival rate, one row per batch size (median of the repeats)."""
    scratch: Path = args.scratch
    files = rsna_phantoms(scratch / "phantoms", args.n, seed=21, size=args.size)
    warmup = rsna_phantoms(scratch / "phantoms", args.warmup, seed=97, size=args.size) if args.warmup else []
    work = Path(tempfile.mkdtemp(prefix="e2e-paced-", dir=scratch))
    orthanc = new_pacs(getattr(args, "peers", "dcmtk-orthanc"), work / "orthanc")
    extra = dict(kv.split("=", 1) for kv in args.env)
    # code variants, interleaved run by run: this tree, and (--baseline-tree) another checkout's
    # dicom_node/models (e.g. `git archive <commit> | tar -x -C DIR`), same bundles and settings
    trees = {"current": {}}
    if getattr(args, "baseline_tree", None):
        trees["baseline"] = {"PYTHONPATH": str(Path(args.baseline_tree).resolve())}
    rows = []
    try:
        orthanc.start()
        for batch in args.batch_sizes:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
            for rep in range(args.repeats):
                for tree, tree_env in trees.items():
                    runs[tree].append(paced_run(orthanc, files, rate=args.paced, batch=batch, device=args.device,
                                                workdir=work / f"node-{tree}-{batch}-{rep}", timeout=args.timeout,
                                                extra_env={**extra, **tree_env}, warmup=warmup))  # fmt: skip
                    print(f"paced {args.paced}/s {tree} batch={batch} rep={rep}: {runs[tree][-1]}", file=sys.stderr,
                          flush=True)  # fmt: skip
            for tree, truns in runs.items():
                row: dict[str, Any] = {"variant": tree, "batch": batch,
                                       "runs_p50_s": [round(r["p50_s"], 3) for r in truns],
                                       "load_1m": [r["load_1m_before_after"] for r in truns]}  # fmt: skip
                for key, val in truns[0].items():
                    if isinstance(val, (int, float)):
                        row[key] = median([r[key] for r in truns])
                rows.append(row)
    finally:
        orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"hardware": hardware(), "n": args.n, "size": args.size, "device": args.device, "warmup": args.warmup,
            "paced": args.paced, "repeats": args.repeats, "env": extra, "rows": rows}  # fmt: skip


def paced_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores (shared), GPU: {hw.get('gpu') or 'none'}; "
        f"device {report['device']}; {report['n']} RSNA-style {report['size']}² JPEG SC at {report['paced']} "
        f"image/s, one association per image (after {report['warmup']} warm-up images); median of {report['repeats']} "
        f"runs; extra env {report['env'] or '-'}.",
        "",
        "| variant | batch | p50 / p95 / p99 / max latency (s), association request → SR + SC in Orthanc (p50 of each run) "
        "| associate + C-STORE + release p50 (ms) | CPU ms per image: node / result processes / Orthanc | peak RSS (MiB) "
        "| 1-min load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        loads = ", ".join(f"{a:.2f} → {b:.2f}" for a, b in r["load_1m"])
        lines.append(
            f"| {r.get('variant', 'current')} | {r['batch']} | {r['p50_s']:.3f} / {r['p95_s']:.3f} / "
            f"{r['p99_s']:.3f} / {r['max_s']:.3f} ({', '.join(map(str, r['runs_p50_s']))}) "
            f"| {r['c_store_ack_p50_ms']:.1f} | {r['cpu_ms_node']:.0f} / {r['cpu_ms_result_processes']:.0f} / "
            f"{r['cpu_ms_orthanc']:.0f} | {r['peak_rss_mb']:.0f} | {loads} |"
        )
    return "\n".join(lines)


class ModelOnly:
    """Model-only throughput of both bundles chained (H3b's ``time_model``), measured right after
    each end-to-end run so that both see the same host load (the VM is shared)."""

    def __init__(self, device: str, images: int, bundles: Path = REPO / "monai_bundles") -> None:
        import torch

        from models.inference.bundle_loader import load_bundle
        from models.inference.engine import (
            DEFAULT_CLASSIFICATION_BUNDLE,
            DEFAULT_DETECTION_BUNDLE,
            resolve_device,
        )

        self.device = resolve_device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(2)  # what the node gets (OMP_NUM_THREADS=2)
        self.images = images
        self.cls = load_bundle(bundles / DEFAULT_CLASSIFICATION_BUNDLE, device=self.device)
        self.det = load_bundle(bundles / DEFAULT_DETECTION_BUNDLE, device=self.device)

    def images_per_s(self, batch: int) -> dict[str, float]:
        """Classifier, detector and both chained (1 / (1/c + 1/d)) at ``batch``, ~``images`` images each."""
        from model_throughput import time_model

        iters = max(1, -(-self.images // batch))
        c = time_model(self.cls, batch, iterations=iters, warmup=1, device=self.device)["images_per_s"]
        d = time_model(self.det, batch, iterations=iters, warmup=1, device=self.device)["images_per_s"]
        return {"classifier": c, "detector": d, "both": 1.0 / (1.0 / c + 1.0 / d)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch: Path = args.scratch
    files = rsna_phantoms(scratch / "phantoms", args.n, seed=21, size=args.size)
    warmup = rsna_phantoms(scratch / "phantoms", args.warmup, seed=97, size=args.size) if args.warmup else []
    configs = [(s, args.default_batch) for s in args.senders]
    configs += [
        (args.default_senders, b) for b in args.batch_sizes if (args.default_senders, b) not in configs
    ]
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=scratch))
    orthancs: dict[str, Pacs] = {}
    by_variant: dict[str, Pacs] = {}
    variant_env = {v: VARIANTS[v] for v in args.variants}
    if getattr(args, "baseline_tree", None):  # another source tree's node, interleaved (see --paced)
        variant_env["baseline"] = {"PYTHONPATH": str(Path(args.baseline_tree).resolve())}
    for variant in variant_env:
        env = ORTHANC_ENV.get(variant, {})
        key = json.dumps(env, sort_keys=True)
        if key not in orthancs:
            orthancs[key] = new_pacs(getattr(args, "peers", "dcmtk-orthanc"), work / f"orthanc-{len(orthancs)}", env)
        by_variant[variant] = orthancs[key]
    rows = []
    extra = dict(kv.split("=", 1) for kv in args.env)
    models = ModelOnly(args.device, args.model_images, Path(extra.get("CXR_NODE_BUNDLES_DIR") or REPO / "monai_bundles"))
    try:
        for orthanc in orthancs.values():
            orthanc.start()
        for senders, batch in configs:
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variant_env}
            for rep in range(args.repeats):
                for variant in variant_env:  # interleaved: host load hits every variant alike
                    runs[variant].append(one_run(
                        by_variant[variant], files, senders=senders, batch=batch, device=args.device,
                        workdir=work / f"node-{variant}-{senders}-{batch}-{rep}", timeout=args.timeout,
                        extra_env={**extra, **variant_env[variant]}, warmup=warmup))  # fmt: skip
                    mo = models.images_per_s(batch)
                    runs[variant][-1]["model_only_images_s"] = mo["both"]
                    runs[variant][-1]["ratio"] = runs[variant][-1]["images_s"] / mo["both"]
                    print(f"{variant} senders={senders} batch={batch} rep={rep}: {runs[variant][-1]}",
                          file=sys.stderr, flush=True)  # fmt: skip
            for variant, vruns in runs.items():
                row = {"variant": variant, "senders": senders, "batch": batch,
                       "runs_images_s": [round(r["images_s"], 2) for r in vruns]}  # fmt: skip
                for key in vruns[0]:
                    vals = [r[key] for r in vruns if r[key] is not None]
                    row[key] = median(vals) if vals else None
                rows.append(row)
    finally:
        for orthanc in orthancs.values():
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"hardware": hardware(), "n": args.n, "size": args.size, "device": args.device, "warmup": args.warmup,
            "torch_threads": 2,  # the node's OMP_NUM_THREADS (NodeProcess) and ModelOnly's set_num_threads
            "repeats": args.repeats, "env": extra, "rows": rows}  # fmt: skip


def to_markdown(report: dict[str, Any]) -> str:
    hw = report["hardware"]
    lines = [
        f"Hardware: {hw['cpu']}, {hw['cores']} logical cores (shared), GPU: {hw.get('gpu') or 'none'}; "
        f"device {report['device']}; N = {report['n']} RSNA-style {report['size']}² JPEG SC per run"
        f" (after {report.get('warmup', 0)} warm-up images); "
        f"median of {report['repeats']} runs; extra env {report['env'] or '-'}.",
        "",
        "| variant | senders | batch | images/s (runs) | p50 / p95 / p99 latency (s) | peak RSS (MiB) "
        "| peak GPU (MiB) | mean batch | models in the node: images/s | e2e / in-node model-only "
        "| separate model-only images/s | e2e / separate model-only |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") else "n/a"
        inn = r.get("in_node_model_images_s")
        lines.append(
            f"| {r['variant']} | {r['senders']} | {r['batch']} "
            f"| {r['images_s']:.2f} ({', '.join(map(str, r['runs_images_s']))}) "
            f"| {r['p50_ms'] / 1000:.1f} / {r['p95_ms'] / 1000:.1f} / {r['p99_ms'] / 1000:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {gpu} | {r.get('mean_batch') or 0:.1f} | {inn or 0:.1f} "
            f"| {100 * r['model_busy_fraction']:.0f}% | {r['model_only_images_s']:.1f} | {100 * r['ratio']:.0f}% |"
        )
    if report["device"] == "cpu" and any("cpu_ms_node" in r for r in report["rows"]):
        threads = report.get("torch_threads", 2)
        lines += [
            "",
            "CPU ms per image over the timed window (/proc utime + stime). \"Models alone\" = the CPU the two "
            f"models need per image when they run alone: {threads} torch threads × 1000 / separate model-only "
            "images/s. On a CPU-only host the pipeline cannot beat model-only × (models alone / total): the "
            "last column is that ceiling for e2e / model-only.",
            "",
            "| variant | senders | batch | node (receive, decode, models, delivery) | result processes (SR + SC) "
            "| Orthanc | total | models alone | ceiling of e2e / model-only |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["rows"]:
            if "cpu_ms_node" not in r:
                continue
            total = r["cpu_ms_node"] + r["cpu_ms_result_processes"] + r["cpu_ms_orthanc"]
            models = threads * 1000 / r["model_only_images_s"]
            lines.append(
                f"| {r['variant']} | {r['senders']} | {r['batch']} | {r['cpu_ms_node']:.0f} "
                f"| {r['cpu_ms_result_processes']:.0f} | {r['cpu_ms_orthanc']:.0f} | {total:.0f} | {models:.0f} "
                f"| {100 * models / total:.0f}% |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="images per run")
    p.add_argument("--size", type=int, default=1024, help="phantom size (RSNA: 1024)")
    p.add_argument("--senders", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--default-batch", type=int, default=8, help="batch size of the senders sweep")
    p.add_argument("--default-senders", type=int, default=2, help="senders of the batch-size sweep")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0,
                   help="images pushed and delivered before the clock starts (0: time a fresh node)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--model-images", type=int, default=16, help="images per model-only measurement")
    p.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    p.add_argument("--env", nargs="*", default=[],
                   help="extra CXR_NODE_*=value for the node (CXR_NODE_BUNDLES_DIR also sets the model-only bundles,"
                        " e.g. the seed-size ones of bench/seed_bundles.py)")  # fmt: skip
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="also run the node from this source tree (its dicom_node/models), interleaved run by run")  # fmt: skip
    p.add_argument("--paced", type=float, default=None, metavar="RATE",
                   help="paced-latency mode: one image every 1/RATE s (bench/paced.py), one row per batch size")  # fmt: skip
    p.add_argument(
        "--variants",
        nargs="+",
        default=["current"],
        choices=sorted(VARIANTS),
        help="code variants run side by side (interleaved) for before/after comparisons",
    )
    p.add_argument("--peers", choices=["dcmtk-orthanc", "python"], default="dcmtk-orthanc",
                   help="what sends to the node and receives its results: storescu and Orthanc (default), or "
                        "pynetdicom for both (bench/python_peers.py: a machine without Debian's packages)")  # fmt: skip
    add_output_arguments(p)
    args = p.parse_args(argv)
    args.scratch.mkdir(parents=True, exist_ok=True)
    if args.paced is not None:
        return emit_report(run_paced(args), args.json, paced_markdown)
    return emit_report(run(args), args.json, to_markdown)


if __name__ == "__main__":
    sys.exit(main())
