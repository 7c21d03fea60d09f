"""Training data: RSNA-layout folders decoded once, prepared like at inference, cached.

Every image goes through exactly the inference path (``models.imaging.dicom_image.load_source_image``
then ``models.imaging.preprocess.prepare``), so the network sees in training what it will see in
the engine. The prepared arrays (float16) and the boxes in model-input pixels (``xyxy``)
are cached in ``<data>/.cxr_node_cache/`` so that later runs skip the DICOM decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES
from models.imaging.preprocess import LETTERBOX, Preprocessing

logger = logging.getLogger(__name__)

CACHE_DIR_NAME = ".cxr_node_cache"
CACHE_FORMAT = 2


@dataclass(frozen=True)
class PreparedSet:
    """Prepared images of one data source, aligned by index."""

    #: float16, (N, H, W), values in [0, 1]
    images: np.ndarray
    #: class index into ``RSNA_CLASSES`` per image
    labels: np.ndarray
    #: per image, float32 array (k, 4) of ``xyxy`` boxes in model-input pixels (k may be 0)
    boxes: tuple[np.ndarray, ...]
    ids: tuple[str, ...]
    source: str = "rsna"
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: the classes ``labels`` index (the classifier head's)
    class_names: tuple[str, ...] = RSNA_CLASSES
    #: index of the positive (finding) class in ``class_names``
    positive_index: int = LUNG_OPACITY_INDEX

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not 0 <= self.positive_index < len(self.class_names):
            raise ValueError(f"positive_index {self.positive_index} outside classes {self.class_names!r}")
        if self.images.ndim != 3 or self.images.shape[0] != n:
            raise ValueError(f"images must be (N={n}, H, W), got shape {self.images.shape!r}")
        if self.labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {self.labels.shape!r}")
        if len(self.boxes) != n:
            raise ValueError(f"boxes must have {n} entries, got {len(self.boxes)}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must index {self.class_names!r}, got range {self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def positive(self) -> np.ndarray:
        """1 where the class is the positive one (Lung Opacity / Pneumonia: the target), else 0."""
        return (self.labels == self.positive_index).astype(np.int64)

    def subset(self, index: Sequence[int]) -> PreparedSet:
        idx = np.asarray(list(index), dtype=np.int64)
        return PreparedSet(
            images=self.images[idx],
            labels=self.labels[idx],
            boxes=tuple(self.boxes[i] for i in idx),
            ids=tuple(self.ids[i] for i in idx),
            source=self.source,
            extra=self.extra,
            class_names=self.class_names,
            positive_index=self.positive_index,
        )

    @staticmethod
    def concat(sets: Sequence[PreparedSet]) -> PreparedSet:
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ValueError("nothing to concatenate: every set is empty")
        heads = {(s.class_names, s.positive_index) for s in sets}
        if len(heads) != 1:
            raise ValueError(f"cannot concatenate sets labelled for different heads: {sorted(heads)}")
        return PreparedSet(
            images=np.concatenate([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            boxes=tuple(b for s in sets for b in s.boxes),
            ids=tuple(i for s in sets for i in s.ids),
            source="+".join(dict.fromkeys(s.source for s in sets)),
            class_names=sets[0].class_names,
            positive_index=sets[0].positive_index,
        )


def _box_xywh(box: Any) -> tuple[float, float, float, float]:
    if hasattr(box, "width"):
        return float(box.x), float(box.y), float(box.width), float(box.height)
    x, y, w, h = (float(v) for v in tuple(box)[:4])
    return x, y, w, h


def class_index(klass: str | None, target: int) -> int:
    """Index into ``RSNA_CLASSES`` of a patient (``Target`` decides when the class is unknown)."""
    if klass in RSNA_CLASSES:
        return RSNA_CLASSES.index(klass)
    if klass:
        raise ValueError(f"unknown RSNA class {klass!r}; expected one of {RSNA_CLASSES}")
    return LUNG_OPACITY_INDEX if int(target) == 1 else 0


def _prepare_one(job: tuple[str, str, tuple[int, int], list[tuple[float, float, float, float]], dict]) -> tuple:
    """Worker: decode one DICOM, prepare it, map its boxes. Returns (id, array|None, boxes, error)."""
    pid, path, size, boxes, spec = job
    try:
        import pydicom

        from models.imaging.dicom_image import load_source_image
        from models.imaging.preprocess import Preprocessing, prepare

        ds = pydicom.dcmread(path)
        src = load_source_image(ds)
        arr, geom = prepare(src, size, Preprocessing.from_config(spec))
        out = []
        if boxes and not hasattr(geom, "box_to_model"):
            raise ValueError("boxes need a letterbox preprocessing (the detector's)")
        for b in boxes:
            x, y, w, h = geom.box_to_model(*b)
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(size[1]), x + w), min(float(size[0]), y + h)
            if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
                out.append((x1, y1, x2, y2))
        return pid, arr[0].astype(np.float16), out, None
    except Exception as exc:  # reported and skipped by the caller
        return pid, None, [], f"{type(exc).__name__}: {exc}"


def _preprocessing_code_hash() -> str:
    """Hash of the decoding/preprocessing source, so that a code change invalidates the cache."""
    import models.imaging.dicom_image
    import models.imaging.geometry
    import models.imaging.preprocess

    h = hashlib.sha1()
    for mod in (models.imaging.dicom_image, models.imaging.preprocess, models.imaging.geometry):
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()[:12]


def _cache_key(jobs: Sequence[tuple], size: tuple[int, int], spec: Preprocessing) -> str:
    h = hashlib.sha1()
    h.update(f"{CACHE_FORMAT}|{size[0]}x{size[1]}|{_preprocessing_code_hash()}|{json.dumps(spec.to_config(), sort_keys=True)}".encode())
    for pid, path, _, boxes, _ in jobs:
        st = os.stat(path)
        h.update(f"|{pid}|{Path(path).name}|{st.st_size}|{int(st.st_mtime)}|{boxes}".encode())
    return h.hexdigest()[:16]


def load_rsna_prepared(
    data_dir: Path | str,
    image_size: tuple[int, int],
    *,
    patient_ids: Sequence[str] | None = None,
    labels: Mapping[str, Any] | None = None,
    workers: int = 2,
    use_cache: bool = True,
    preprocessing: Preprocessing = LETTERBOX,
) -> PreparedSet:
    """Decode and prepare the RSNA-layout folder ``data_dir`` (or the given patients of it).

    ``labels`` is ``models.datasets.rsna_layout.read_rsna_labels(data_dir)`` (read here when None).
    Images go through the bundle's ``preprocessing`` (``models.imaging.preprocess.prepare``), as in the engine.
    Images that cannot be decoded are logged and skipped. Labels index the RSNA classes.
    """
    from models.datasets.rsna_layout import read_rsna_labels

    data_dir = Path(data_dir)
    size = (int(image_size[0]), int(image_size[1]))
    labels = read_rsna_labels(data_dir) if labels is None else labels
    ids = sorted(labels) if patient_ids is None else list(patient_ids)
    jobs = []
    for pid in ids:
        lab = labels[pid]
        if lab.image_path is None or not Path(lab.image_path).is_file():
            raise FileNotFoundError(f"image of patient {pid!r} not found: {lab.image_path!r}")
        jobs.append((pid, str(lab.image_path), size, [_box_xywh(b) for b in (lab.boxes or ())],
                     preprocessing.to_config()))

    key = _cache_key(jobs, size, preprocessing)
    cache_file = data_dir / CACHE_DIR_NAME / f"prepared_{size[0]}x{size[1]}_{key}.npz"
    results: dict[str, tuple[np.ndarray, list]] = {}
    if use_cache and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as z:
            cached_ids = [str(s) for s in z["ids"]]
            boxes_by_id = json.loads(str(z["boxes_json"]))
            images = z["images"]  # read once: every z[...] access re-reads the array from the file
            for i, pid in enumerate(cached_ids):
                results[pid] = (images[i], boxes_by_id[pid])
        logger.info("prepared-image cache hit", extra={"cache": str(cache_file), "n": len(results)})
    else:
        errors = 0
        if workers > 1 and len(jobs) > 8:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                outs = list(pool.map(_prepare_one, jobs, chunksize=8))
        else:
            outs = [_prepare_one(j) for j in jobs]
        for pid, arr, boxes, err in outs:
            if err is not None:
                errors += 1
                logger.warning("skipping undecodable image", extra={"error": err})
                continue
            results[pid] = (arr, boxes)
        if use_cache and results:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            kept = [p for p in ids if p in results]
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                ids=np.array(kept),
                images=np.stack([results[p][0] for p in kept]),
                boxes_json=np.array(json.dumps({p: results[p][1] for p in kept})),
            )
            tmp.replace(cache_file)
        logger.info("prepared images", extra={"n": len(results), "errors": errors, "cache": str(cache_file)})
    kept = [p for p in ids if p in results]
    if not kept:
        raise ValueError(f"no decodable images among {len(ids)} patients in {data_dir}")
    return PreparedSet(
        images=np.stack([results[p][0] for p in kept]).astype(np.float16),
        labels=np.array([class_index(labels[p].klass, labels[p].target) for p in kept], dtype=np.int64),
        boxes=tuple(np.asarray(results[p][1], dtype=np.float32).reshape(-1, 4) for p in kept),
        ids=tuple(kept),
        source="rsna",
    )


def load_pneumoniamnist(
    path: Path | str,
    split: str,
    image_size: tuple[int, int],
    *,
    preprocessing: Preprocessing = LETTERBOX,
    class_names: Sequence[str] = RSNA_CLASSES,
    positive_class: str = RSNA_CLASSES[LUNG_OPACITY_INDEX],
) -> PreparedSet:
    """One split (``train``/``val``/``test``) of a PneumoniaMNIST-layout ``.npz``, each image through the
    bundle's ``preprocessing`` (``models.imaging.preprocess.prepare``, exactly as the engine prepares a DICOM).

    Label 1 (pneumonia) becomes ``positive_class``, 0 becomes "Normal", both indexes into
    ``class_names`` (the head being trained). No boxes.
    """
    from models.imaging.dicom_image import SourceImage
    from models.imaging.preprocess import prepare
    from models.training.head import ClassifierHead

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    head = ClassifierHead(tuple(class_names), positive_class)
    with np.load(path) as z:
        key_i, key_l = f"{split}_images", f"{split}_labels"
        if key_i not in z or key_l not in z:
            raise ValueError(f"{path} lacks {key_i}/{key_l} (PneumoniaMNIST layout expected), has {list(z)}")
        imgs = z[key_i]
        labs = z[key_l].reshape(-1).astype(np.int64)
    if imgs.ndim == 4:  # (N, H, W, 1)
        imgs = imgs[..., 0]
    size = (int(image_size[0]), int(image_size[1]))
    out = np.empty((len(imgs), *size), dtype=np.float16)
    for i, img in enumerate(imgs):
        pixels = np.ascontiguousarray(img, dtype=np.float32) / np.float32(255.0)
        source = SourceImage(pixels, int(img.shape[0]), int(img.shape[1]), f"pneumoniamnist-{split}-{i}")
        out[i] = prepare(source, size, preprocessing)[0][0]
    labels = np.array([head.index_of_binary(int(v)) for v in labs], dtype=np.int64)
    n = len(labels)
    return PreparedSet(
        images=out,
        labels=labels,
        boxes=tuple(np.zeros((0, 4), np.float32) for _ in range(n)),
        ids=tuple(f"pneumoniamnist-{split}-{i}" for i in range(n)),
        source="pneumoniamnist",
        class_names=head.class_names,
        positive_index=head.positive_index,
    )


def sample_weights(labels: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
    """Per-sample weights for a balanced ``WeightedRandomSampler``.

    Every (group, label) cell gets the same total weight, so each class is drawn equally
    often, and within a class each data source (``groups``, e.g. ``rsna`` / ``pneumoniamnist``)
    too. Returns weights summing to 1.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("sample_weights needs at least one label")
    keys = [f"{g}|{lab}" for g, lab in zip(groups if groups is not None else ["all"] * len(labels), labels, strict=True)]
    uniq, inverse, counts = np.unique(np.array(keys), return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse].astype(np.float64)
    return w / w.sum()


def source_groups(ids: Sequence[str]) -> list[str]:
    """Data source of each id (``pneumoniamnist`` for the extra set, else ``rsna``)."""
    return ["pneumoniamnist" if i.startswith("pneumoniamnist-") else "rsna" for i in ids]
