"""Training loops of both bundles: split, balanced sampling, augmentation, AMP, best checkpoint, resume."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from models.imaging.preprocess import LETTERBOX, Preprocessing
from models.training import bundle_io
from models.training.augment import AugmentConfig, augment
from models.training.config import TrainConfig
from models.training.data import (
    PreparedSet,
    load_pneumoniamnist,
    load_rsna_prepared,
    sample_weights,
    source_groups,
)
from models.training.head import ClassifierHead, apply_rsna_head

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
#: candidate reporting thresholds tried on the validation set (detection)
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05)) + (0.93, 0.95, 0.97)
#: the detection threshold is the best RSNA score among thresholds keeping at least this recall
MIN_VAL_RECALL = 0.85


# --------------------------------------------------------------------------- datasets


class _AugmentedSet(Dataset):
    """Prepared images (+ boxes) with on-the-fly augmentation, deterministic per (seed, epoch, index)."""

    def __init__(self, data: PreparedSet, cfg: AugmentConfig | None, seed: int):
        self.data, self.cfg, self.seed, self.epoch = data, cfg, seed, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, np.ndarray]:
        img = torch.from_numpy(self.data.images[i].astype(np.float32))[None]
        boxes = self.data.boxes[i]
        if self.cfg is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            img, boxes = augment(img, boxes, rng, self.cfg)
        return img, int(self.data.labels[i]), boxes


#: File in the bundle folder holding the patient-level split training used (models.datasets.split format).
SPLIT_FILE_NAME = "split.json"

def _collate(batch: Sequence[tuple[torch.Tensor, int, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, list]:
    imgs = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    return imgs, labels, [torch.from_numpy(np.asarray(b[2], np.float32).reshape(-1, 4)) for b in batch]


def _batches(data: PreparedSet, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    for start in range(0, len(data), batch_size):
        yield start, torch.from_numpy(data.images[start : start + batch_size].astype(np.float32))[:, None]


# --------------------------------------------------------------------------- evaluation


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from models.evaluation.metrics import roc_auc

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc(y, s))


@torch.no_grad()
def predict_classification(network: torch.nn.Module, data: PreparedSet, device: torch.device,
                           batch_size: int = 32, preprocessing: Preprocessing = LETTERBOX) -> np.ndarray:
    """Softmax probabilities ``(N, classes)`` of ``network`` on prepared images (the bundle's
    ``preprocessing.network_input`` applied, as in the engine)."""
    network.eval()
    out = []
    for _, x in _batches(data, batch_size):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = network(preprocessing.network_input(x.to(device)))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(data.class_names)), np.float32)


def classification_metrics(probs: np.ndarray, data: PreparedSet, positive_column: int | None = None) -> dict[str, Any]:
    """AUC of P(positive class) vs the rest (overall and per source), accuracy, n.

    ``positive_column``: the network output of the positive class when the network's head differs
    from the labels' classes (e.g. the Normal / Pneumonia head on RSNA-labelled data); accuracy is
    then not defined (None)."""
    y = data.positive
    same_head = positive_column is None or probs.shape[1] == len(data.class_names)
    p = probs[:, data.positive_index if positive_column is None else positive_column]
    accuracy = float((probs.argmax(1) == data.labels).mean()) if len(y) and same_head else None
    out: dict[str, Any] = {"n": len(y), "n_positive": int(y.sum()), "auc": _auc(y, p), "accuracy": accuracy}
    sources = np.array(source_groups(data.ids))
    for src in np.unique(sources):
        m = sources == src
        out[f"auc_{src}"] = _auc(y[m], p[m])
    per_src = [v for k, v in out.items() if k.startswith("auc_") and not math.isnan(v)]
    out["selection_metric"] = float(np.mean(per_src)) if per_src else float("nan")
    return out


@torch.no_grad()
def predict_detection(detector: torch.nn.Module, data: PreparedSet, device: torch.device,
                      batch_size: int = 8, preprocessing: Preprocessing = LETTERBOX) -> list[np.ndarray]:
    """Per image, an ``(k, 5)`` array of ``x1, y1, x2, y2, score`` (x = column) in model-input pixels."""
    from models.networks import SCORE_KEY, monai_boxes_to_xyxy

    detector.eval()
    out: list[np.ndarray] = []
    for _, x in _batches(data, batch_size):
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            preds = detector([im for im in preprocessing.network_input(x.to(device))])
        for p in preds:
            b = monai_boxes_to_xyxy(p[detector.target_box_key].float().cpu().reshape(-1, 4)).numpy()
            s = p[SCORE_KEY].float().cpu().numpy().reshape(-1, 1)
            out.append(np.concatenate([b, s], axis=1))
    return out


def _xyxy_to_xywh(b: np.ndarray) -> list[tuple[float, float, float, float]]:
    return [(float(x1), float(y1), float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in b[:, :4] if x2 > x1 and y2 > y1]


def detection_metrics(preds: Sequence[np.ndarray], data: PreparedSet, threshold: float) -> dict[str, Any]:
    """RSNA mAP, recall and precision at IoU 0.4 of the predictions with score >= ``threshold``."""
    from models.evaluation.metrics import detection_recall, rsna_map

    pairs = []
    n_pred = 0
    for p, gt in zip(preds, data.boxes, strict=True):
        kept = p[p[:, 4] >= threshold]
        n_pred += len(kept)
        pairs.append((_xyxy_to_xywh(gt), [(*b, float(s)) for b, s in zip(_xyxy_to_xywh(kept), kept[:, 4], strict=False)]))
    n_gt = sum(len(g) for g, _ in pairs)
    recall = float(detection_recall(pairs, iou=0.4, score_threshold=threshold)) if n_gt else float("nan")
    tp = recall * n_gt if n_gt else 0.0
    return {
        "threshold": float(threshold),
        "rsna_map": float(rsna_map(pairs)),
        "recall_iou0.4": recall,
        "precision_iou0.4": float(tp / n_pred) if n_pred else float("nan"),
        "n_images": len(pairs),
        "n_truth_boxes": n_gt,
    }


def choose_threshold(preds: Sequence[np.ndarray], data: PreparedSet) -> dict[str, Any]:
    """Best reporting threshold on validation data (see ``MIN_VAL_RECALL``) and its metrics."""
    results = [detection_metrics(preds, data, t) for t in THRESHOLD_GRID]

    def score(r: dict[str, Any]) -> float:
        return -1.0 if math.isnan(r["rsna_map"]) else r["rsna_map"]

    ok = [r for r in results if not math.isnan(r["recall_iou0.4"]) and r["recall_iou0.4"] >= MIN_VAL_RECALL]
    pool = ok or results
    top = max(score(r) for r in pool)
    tied = [r for r in pool if score(r) >= top - 1e-9]  # ascending thresholds
    best = tied[len(tied) // 2]  # middle of a plateau of equally good thresholds: least fragile
    return dict(best, selection_metric=score(best))


# --------------------------------------------------------------------------- helpers


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _split(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, Path]]:
    """Read the labels of every data folder, cap to ``max_images``, split patient-level."""
    from models.datasets.rsna_layout import read_rsna_labels
    from models.datasets.split import split_patients

    labels: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    for d in cfg.data_dirs:
        for pid, lab in read_rsna_labels(d).items():
            if pid in labels:
                raise ValueError(f"patient {pid!r} appears in more than one data folder ({origin[pid]} and {d})")
            labels[pid] = lab
            origin[pid] = d
    if cfg.max_images is not None and len(labels) > cfg.max_images:
        ids = sorted(labels)
        keep = np.random.default_rng(cfg.seed).permutation(len(ids))[: cfg.max_images]
        labels = {ids[i]: labels[ids[i]] for i in sorted(keep)}
    split = split_patients(labels, seed=cfg.seed, fractions=cfg.fractions)
    if not split["train"] or not split["val"]:
        raise ValueError(f"split left an empty train or val set: sizes { {k: len(v) for k, v in split.items()} }")
    return labels, split, origin


def _load_split(cfg: TrainConfig, labels: dict[str, Any], ids: list[str], origin: dict[str, Path],
                size: tuple[int, int], preprocessing: Preprocessing) -> PreparedSet:
    parts = []
    for d in cfg.data_dirs:
        mine = [p for p in ids if origin[p] == d]
        if mine:
            parts.append(load_rsna_prepared(d, size, patient_ids=mine, labels=labels, workers=cfg.workers,
                                            use_cache=cfg.use_cache, preprocessing=preprocessing))
    return PreparedSet.concat(parts)


def _class_counts(data: PreparedSet) -> dict[str, int]:
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    return {name: int(c) for name, c in zip(data.class_names, counts, strict=True)}


def choose_decision_threshold(probs: np.ndarray, data: PreparedSet) -> dict[str, Any]:
    """The image-level operating threshold, chosen on validation data: Youden's J (sensitivity +
    specificity - 1) maximal; with its validation sensitivity and specificity."""
    from models.evaluation.metrics import youden_threshold

    y = data.positive
    p = probs[:, data.positive_index]
    if len(np.unique(y)) < 2:
        return {"threshold": 0.5, "rule": "default (validation data has one class)"}
    best = youden_threshold(y, p)
    lower = p[p < best]
    # half-way to the next lower score: the same split of the validation data, less fragile
    t = float(np.clip((best + lower.max()) / 2 if len(lower) else best, 1e-3, 1 - 1e-3))
    pred = p >= t
    return {
        "threshold": t,
        "rule": "Youden's J maximal on the validation split",
        "val_sensitivity": float(pred[y == 1].mean()),
        "val_specificity": float((~pred[y == 0]).mean()),
    }


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, str(tmp))
    tmp.replace(path)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else round(x, 6)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


# --------------------------------------------------------------------------- main entry


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training; returns the summary also written to the bundle's ``metadata.json``."""
    from models.networks import (
        bundle_detector,
        image_size_of,
        load_bundle_parser,
        save_state_dict_file,
        xyxy_to_monai_boxes,
    )

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out_dir = bundle_io.ensure_bundle(cfg.task, cfg.out_dir)
    if cfg.task == "classification" and cfg.data_dirs and apply_rsna_head(out_dir):
        logger.info("RSNA data: the bundle now has the three-class RSNA head", extra={"bundle": str(out_dir)})
    parser = load_bundle_parser(out_dir)
    if cfg.image_size is not None:
        parser["image_size"] = list(cfg.image_size)
    size = image_size_of(parser)
    config = parser.get()
    preprocessing = Preprocessing.from_config(config.get("preprocessing"))
    head = ClassifierHead.from_config(config) if cfg.task == "classification" else None
    if head is not None and not cfg.data_dirs and set(head.class_names) != {"Normal", head.positive_class}:
        raise ValueError(
            f"PneumoniaMNIST alone has labels for Normal and {head.positive_class!r} only, but the bundle "
            f"{out_dir} has the head {list(head.class_names)}: start from the shipped cxr_classification configs"
        )

    t0 = time.monotonic()
    labels: dict[str, Any] = {}
    split: dict[str, list[str]] = {}
    sets_train: list[PreparedSet] = []
    sets_val: list[PreparedSet] = []
    if cfg.data_dirs:
        labels, split, origin = _split(cfg)
        # the exact patient split travels with the bundle: `cxr-node evaluate` reads it, so its test split
        # is the one training held out even when --max-images or several --data folders changed the patient set
        from models.datasets.split import write_split

        write_split(out_dir / SPLIT_FILE_NAME, split, seed=cfg.seed, fractions=cfg.fractions)
        sets_train.append(_load_split(cfg, labels, split["train"], origin, size, preprocessing))
        sets_val.append(_load_split(cfg, labels, split["val"], origin, size, preprocessing))
    extra_info: dict[str, Any] | None = None
    if cfg.extra_npz is not None:
        assert head is not None  # TrainConfig: extra_npz is for classification
        kw = {"preprocessing": preprocessing, "class_names": head.class_names, "positive_class": head.positive_class}
        extra_train = load_pneumoniamnist(cfg.extra_npz, "train", size, **kw)
        extra_val = load_pneumoniamnist(cfg.extra_npz, "val", size, **kw)
        extra_info = {"file": cfg.extra_npz.name, "train": len(extra_train), "val": len(extra_val),
                      "label_map": {"1": head.positive_class, "0": "Normal"},
                      "splits": "official train split for fitting, val split for selection; test untouched"}
        sets_train.append(extra_train)
        sets_val.append(extra_val)
    train_set = PreparedSet.concat(sets_train)
    val_set = PreparedSet.concat(sets_val)
    logger.info("data ready", extra={"train": len(train_set), "val": len(val_set), "image_size": size,
                                     "seconds": round(time.monotonic() - t0, 1)})

    if cfg.task == "classification":
        network = parser.get_parsed_content("network_def")
        model: torch.nn.Module = network
        train_labels = train_set.labels
    else:
        model = bundle_detector(parser)
        network = model.network
        train_labels = np.array([1 if len(b) else 0 for b in train_set.boxes], dtype=np.int64)
    if cfg.init_weights is not None:
        from models.networks import load_state_dict_file

        network.load_state_dict(load_state_dict_file(cfg.init_weights), strict=True)
        logger.info("initialised from weights", extra={"init_weights": str(cfg.init_weights)})
    network.to(device)
    model.to(device)

    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * 0.02)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_metric, best_epoch, best_val, history = 0, -math.inf, -1, {}, []
    ckpt_path = cfg.checkpoint_path
    if cfg.resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume given but no checkpoint at {ckpt_path}")
        ck = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
        if ck.get("task") != cfg.task or tuple(ck.get("image_size", ())) != size:
            raise ValueError(
                f"checkpoint {ckpt_path} is for task={ck.get('task')!r} image_size={ck.get('image_size')!r}, "
                f"not task={cfg.task!r} image_size={size!r}"
            )
        network.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch = int(ck["epoch"])
        best_metric, best_epoch = float(ck["best_metric"]), int(ck["best_epoch"])
        best_val, history = ck.get("best_val", {}), ck.get("history", [])
        logger.info("resumed", extra={"checkpoint": str(ckpt_path), "epoch": start_epoch, "best_metric": best_metric})

    writer = None
    if cfg.tensorboard is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tensorboard needs the 'tensorboard' package (pip install tensorboard)") from exc
        writer = SummaryWriter(log_dir=str(cfg.tensorboard))

    ds = _AugmentedSet(train_set, cfg.augment, cfg.seed)
    n_per_epoch = cfg.samples_per_epoch or len(train_set)
    weights_np = sample_weights(train_labels, source_groups(train_set.ids))
    best_path = out_dir / "models" / "model.pt"
    from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        ds.epoch = epoch
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler = WeightedRandomSampler(weights_np.tolist(), n_per_epoch, replacement=True, generator=gen)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=_collate,
                            num_workers=0, drop_last=len(ds) > cfg.batch_size and n_per_epoch > cfg.batch_size)
        model.train()
        losses: list[float] = []
        bar = tqdm(loader, desc=f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not cfg.progress, leave=True, dynamic_ncols=True)
        for imgs, labs, boxes in bar:
            imgs = imgs.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                inputs = preprocessing.network_input(imgs)
                if cfg.task == "classification":
                    loss = torch.nn.functional.cross_entropy(model(inputs), labs.to(device))
                else:
                    targets = [{"boxes": xyxy_to_monai_boxes(b).to(device),
                                "labels": torch.zeros(len(b), dtype=torch.int64, device=device)} for b in boxes]
                    ld = model([im for im in inputs], targets)
                    loss = ld["classification"] + ld["box_regression"]
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        scheduler.step()
        train_loss = float(np.mean(losses)) if losses else float("nan")

        if cfg.task == "classification":
            val = classification_metrics(
                predict_classification(network, val_set, device, preprocessing=preprocessing), val_set
            )
        else:
            val = choose_threshold(predict_detection(model, val_set, device, preprocessing=preprocessing), val_set)
        record = {"epoch": epoch + 1, "train_loss": train_loss, **val}
        history.append(_json_safe(record))
        logger.info("epoch done", extra=_json_safe(record))
        print(f"[{cfg.task}] epoch {epoch + 1}/{cfg.epochs} train_loss={train_loss:.4f} "
              f"val_selection={val['selection_metric']:.4f}", flush=True)
        if writer is not None:
            writer.add_scalar("train/loss", train_loss, epoch + 1)
            for k, v in val.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    writer.add_scalar(f"val/{k}", v, epoch + 1)
        metric = val["selection_metric"]
        if not math.isnan(metric) and metric > best_metric:
            best_metric, best_epoch, best_val = float(metric), epoch + 1, _json_safe(val)
            save_state_dict_file(network, best_path, half=cfg.half_weights)
            if cfg.task == "detection":
                bundle_io.update_inference_config(out_dir, score_threshold=float(val["threshold"]))
        _save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "task": cfg.task, "image_size": list(size), "epoch": epoch + 1,
            "model": network.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if use_amp else None,
            "best_metric": best_metric, "best_epoch": best_epoch, "best_val": best_val, "history": history,
        })
    if writer is not None:
        writer.close()
    if best_epoch < 0:  # every validation was NaN (e.g. one-class val set): keep the last weights
        save_state_dict_file(network, best_path, half=cfg.half_weights)
        best_epoch = cfg.epochs

    bundle_io.update_inference_config(out_dir, image_size=list(size))
    decision: dict[str, Any] | None = None
    if cfg.task == "classification":  # the operating threshold of the kept weights, chosen on val
        from models.networks import load_state_dict_file

        network.load_state_dict(load_state_dict_file(best_path), strict=True)
        val_probs = predict_classification(network, val_set, device, preprocessing=preprocessing)
        decision = choose_decision_threshold(val_probs, val_set)
        bundle_io.update_inference_config(out_dir, decision_threshold=round(float(decision["threshold"]), 6))
    if cfg.data_dirs:
        split_info: dict[str, Any] = {
            "seed": cfg.seed, "fractions": list(cfg.fractions), "file": SPLIT_FILE_NAME,
            "sizes": {k: len(v) for k, v in split.items()}, "unit": "patient",
            "used": "train for fitting, val for checkpoint selection; test untouched"}
    else:
        split_info = {"pneumoniamnist": "official splits: train for fitting, val for checkpoint and threshold "
                                        "selection; test untouched",
                      "sizes": {"train": len(train_set), "val": len(val_set)}}
    summary = _json_safe({
        "task": cfg.task,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "data": {"folders": [d.name for d in cfg.data_dirs], "n_patients": len(labels),
                 "train_class_counts": _class_counts(train_set), "extra_npz": extra_info},
        "split": split_info,
        "head": None if head is None else {"class_names": list(head.class_names),
                                           "positive_class": head.positive_class},
        "preprocessing": preprocessing.to_config(),
        "decision_threshold": decision,
        "image_size": list(size),
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "samples_per_epoch": n_per_epoch,
        "lr": cfg.lr, "device": str(device), "amp": use_amp,
        "init_weights": cfg.init_weights.name if cfg.init_weights else None,
        "augmentation": asdict(cfg.augment),
        "best_epoch": best_epoch, "val_metrics": best_val, "history": history,
    })
    if cfg.data_dirs:
        description = cfg.data_description or (
            f"Trained with `cxr-node train {cfg.task}` on {len(labels)} patients from "
            f"{', '.join(d.name for d in cfg.data_dirs)} (patient-level split seed {cfg.seed})"
            + (f" plus {cfg.extra_npz.name}" if cfg.extra_npz else "") + "."
        )
    else:
        description = cfg.data_description or (
            f"Trained with `cxr-node train {cfg.task}` on the train split of {cfg.extra_npz.name if cfg.extra_npz else '?'}"
            f" ({len(train_set)} images), selected on its val split ({len(val_set)} images); test split untouched."
        )
    bundle_io.update_metadata(out_dir, training=summary, training_data=description, image_size=size)
    return summary
