"""Load one MONAI bundle folder into a ready-to-run network.

A bundle folder (see ``docs/ARCHITECTURE.md``) has ``configs/metadata.json``,
``configs/inference.json`` (read with :class:`monai.bundle.ConfigParser`) and
``models/model.pt`` (a ``state_dict`` of ``network_def``). :func:`load_bundle`
instantiates ``network_def`` (and ``detector`` for a detection bundle), loads the
weights strictly with ``torch.load(weights_only=True)``, casts fp16-stored weights to
fp32, puts everything in eval mode on the requested device and returns a
:class:`LoadedBundle`. Every problem is reported as a :class:`~models.errors.BundleError`
that names the path and the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from models.errors import BundleError
from models.findings import LUNG_OPACITY_INDEX, RSNA_CLASSES, FindingCode, ModelInfo
from models.imaging.preprocess import LETTERBOX, Preprocessing

logger = logging.getLogger(__name__)

KINDS: tuple[str, str] = ("classification", "detection")
#: The one class the detector finds.
DETECTION_CLASS_NAMES: tuple[str] = (RSNA_CLASSES[LUNG_OPACITY_INDEX],)
#: Reporting threshold for detector boxes when the bundle does not declare one.
DEFAULT_DETECTION_SCORE_THRESHOLD = 0.5
#: Keys (in ``inference.json``, then in ``metadata.json['cxr_node']``) that may hold the box reporting threshold.
_THRESHOLD_KEYS: tuple[str, ...] = (
    "score_threshold",
    "reporting_threshold",
    "report_score_threshold",
    "detection_score_threshold",
)

#: How the detector's output (and training target) boxes are ordered, from ``inference.json["box_format"]``:
#: "xyxy" = ``[x1, y1, x2, y2]`` with x = column (the default, docs/ARCHITECTURE.md wording);
#: "monai" = MONAI's own order for a ``(B, C, H, W)`` tensor, ``[row1, col1, row2, col2]``
#: (box coordinates follow the tensor's spatial axes; MONAI's anchors are generated that way).
BOX_FORMATS: tuple[str, str] = ("xyxy", "monai")
DEFAULT_BOX_FORMAT = "xyxy"

#: What an RSNA-trained three-class head measures when its config names no ``finding``:
#: DCM 112001 "Opacity" (CID 6102 Chest CAD findings), found in the lung.
RSNA_OPACITY_FINDING = FindingCode("112001", "DCM", "Opacity")
#: Image-level decision threshold when the classification bundle declares none.
DEFAULT_DECISION_THRESHOLD = 0.5
#: Length (hex digits) of a bundle digest.
DIGEST_LENGTH = 12

METADATA_FILE = Path("configs") / "metadata.json"
INFERENCE_FILE = Path("configs") / "inference.json"
WEIGHTS_FILE = Path("models") / "model.pt"


@dataclass(frozen=True, eq=False)
class LoadedBundle:
    """One bundle, loaded: network in eval mode on ``device`` with its weights.

    ``network`` is the ``network_def`` module (for a detection bundle it is the
    detector's own ``network``); ``detector`` is the ``RetinaNetDetector`` (detection only).
    """

    name: str
    version: str
    kind: str
    image_size: tuple[int, int]
    network: torch.nn.Module
    path: Path
    device: torch.device
    detector: torch.nn.Module | None = None
    class_names: tuple[str, ...] = ()
    #: classification: the class whose probability is the finding's probability
    positive_class: str | None = None
    #: classification: what the positive class means, as a code (see ``models.findings.FindingCode``)
    finding: FindingCode | None = None
    #: classification: the bundle's image-level operating threshold (chosen on validation data)
    decision_threshold: float | None = None
    #: classification: dotted name of the module whose activations the heatmap uses (None: no heatmap)
    heatmap_layer: str | None = None
    #: how a decoded image becomes this bundle's network input (``preprocessing`` in inference.json)
    preprocessing: Preprocessing = LETTERBOX
    #: short SHA-256 of the weights file and ``configs/inference.json`` (see :func:`bundle_digest`)
    digest: str = "unknown"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Boxes with a score below this are not reported (detection); None for classification.
    score_threshold: float | None = None
    #: Order of the detector's box coordinates, one of :data:`BOX_FORMATS` (detection only).
    box_format: str = DEFAULT_BOX_FORMAT

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError(f"LoadedBundle needs a name and a version, got {self.name!r} {self.version!r}")
        if self.kind not in KINDS:
            raise ValueError(f"LoadedBundle kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.image_size) != 2 or any(int(s) <= 0 for s in self.image_size):
            raise ValueError(f"LoadedBundle image_size must be two positive ints, got {self.image_size!r}")
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {self.box_format!r}")
        if self.kind == "detection":
            if self.detector is None:
                raise ValueError(f"a detection bundle needs a detector ({self.path})")
            if self.score_threshold is None or not 0.0 <= self.score_threshold <= 1.0:
                raise ValueError(f"detection score_threshold must be in [0, 1], got {self.score_threshold!r}")
            return
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"classification class_names must be >= 2 distinct names, got {self.class_names!r}")
        if self.positive_class not in self.class_names:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {self.class_names!r}")
        if not isinstance(self.finding, FindingCode):
            raise ValueError(f"a classification bundle needs its finding code, got {self.finding!r}")
        if self.decision_threshold is None or not 0.0 < self.decision_threshold < 1.0:
            raise ValueError(f"decision_threshold must be in (0, 1), got {self.decision_threshold!r}")

    @property
    def positive_index(self) -> int:
        """Index of :attr:`positive_class` in the network output (classification)."""
        if self.positive_class is None:
            raise ValueError(f"{self.name} is a {self.kind} bundle: it has no positive class")
        return self.class_names.index(self.positive_class)

    def box_to_xyxy(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """One detector output box → ``(x1, y1, x2, y2)`` in model-input pixels, x = column."""
        return detector_box_to_xyxy(box, self.box_format)

    @property
    def model_info(self) -> ModelInfo:
        """``ModelInfo(name, version, digest)`` for :class:`~models.findings.Findings`."""
        return ModelInfo(self.name, self.version, self.digest)


def monai_box_to_xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A MONAI 2-D box ``[row1, col1, row2, col2]`` (tensor spatial order) → ``(x1, y1, x2, y2)``, x = column."""
    r1, c1, r2, c2 = (float(v) for v in box[:4])
    return c1, r1, c2, r2


def xyxy_to_monai_box(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """Inverse of :func:`monai_box_to_xyxy`: ``(x1, y1, x2, y2)``, x = column → ``[row1, col1, row2, col2]``."""
    return float(y1), float(x1), float(y2), float(x2)


def detector_box_to_xyxy(box: Sequence[float], box_format: str) -> tuple[float, float, float, float]:
    """A detector output box in ``box_format`` (see :data:`BOX_FORMATS`) → ``(x1, y1, x2, y2)``, x = column."""
    if box_format == "monai":
        return monai_box_to_xyxy(box)
    if box_format == "xyxy":
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        return x1, y1, x2, y2
    raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"bundle file missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bad JSON in {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _resolve_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"device {dev} requested but CUDA is not available")
    return dev


def _parse_image_size(value: Any, path: Path) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise BundleError(f"{path}: image_size must be [H, W] positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def _threshold(config: Mapping[str, Any], metadata: Mapping[str, Any], path: Path) -> float:
    raw = metadata.get("cxr_node")
    node_meta: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    for source in (config, node_meta):
        for key in _THRESHOLD_KEYS:
            if key in source:
                value = source[key]
                if (
                    not isinstance(value, (int, float))
                    or isinstance(value, bool)
                    or not math.isfinite(value)
                    or not 0.0 <= value <= 1.0
                ):
                    raise BundleError(f"{path}: {key} must be a number in [0, 1], got {value!r}")
                return float(value)
    return DEFAULT_DETECTION_SCORE_THRESHOLD


def bundle_digest(bundle_dir: Path | str) -> str:
    """Short SHA-256 (:data:`DIGEST_LENGTH` hex digits) of a bundle's weights and inference config.

    Everything that changes what the bundle outputs is in those two files (the network, its
    weights, the preprocessing, the thresholds); ``metadata.json`` (model card, measured
    figures) is left out, so documenting a bundle does not change its results' identity.
    """
    bundle_dir = Path(bundle_dir)
    h = hashlib.sha256()
    for rel in (WEIGHTS_FILE, INFERENCE_FILE):
        path = bundle_dir / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {path} for the bundle digest: {exc}") from exc
        if rel == INFERENCE_FILE:  # formatting and key order do not change the configuration
            try:
                data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BundleError(f"bad JSON in {path}: {exc}") from exc
        h.update(str(rel).encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:DIGEST_LENGTH]


def _finding(config: Mapping[str, Any], class_names: tuple[str, ...], path: Path) -> FindingCode:
    raw = config.get("finding")
    if raw is None:
        if class_names == RSNA_CLASSES:
            return RSNA_OPACITY_FINDING
        raise BundleError(f"{path}: a classifier with classes {list(class_names)} must declare its 'finding' code")
    if not isinstance(raw, Mapping):
        raise BundleError(f"{path}: 'finding' must be an object {{value, scheme, meaning}}, got {raw!r}")
    try:
        return FindingCode(str(raw["value"]), str(raw["scheme"]), str(raw["meaning"]))
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{path}: bad 'finding' {dict(raw)!r}: {exc}") from exc


def _decision_threshold(config: Mapping[str, Any], path: Path) -> float:
    value = config.get("decision_threshold", DEFAULT_DECISION_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise BundleError(f"{path}: decision_threshold must be a number in (0, 1), got {value!r}")
    return float(value)


def _load_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise BundleError(f"bundle weights missing: {weights}")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, refused globals...
        raise BundleError(f"cannot read weights {weights}: {type(exc).__name__}: {exc}") from exc
    # Accept the common wrappers {"state_dict": ...} / {"model": ...} as well as a bare state_dict.
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "network"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{weights} does not hold a state_dict of tensors (got {type(obj).__name__})")
    # fp16-stored weights (half the file size) are cast back to fp32; AMP decides precision at run time.
    return {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v) for k, v in obj.items()}


def _instantiate(parser: Any, key: str, path: Path) -> Any:
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:
        raise BundleError(f"{path}: cannot instantiate '{key}': {type(exc).__name__}: {exc}") from exc


def load_bundle(bundle_dir: Path | str, *, device: torch.device | str = "cpu") -> LoadedBundle:
    """Load the bundle folder ``bundle_dir`` onto ``device``.

    Raises:
        BundleError: missing folder or file, bad JSON, a config that cannot be instantiated,
            weights that do not match the network (strict load), wrong class names.
    """
    from monai.bundle import ConfigParser  # heavy import, kept local

    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder missing: {bundle_dir}")
    dev = _resolve_device(device)
    metadata = _read_json(bundle_dir / METADATA_FILE)
    inference_path = bundle_dir / INFERENCE_FILE
    config = _read_json(inference_path)

    version = metadata.get("version")
    if not isinstance(version, str) or not version:
        raise BundleError(
            f"{bundle_dir / METADATA_FILE}: 'version' must be a non-empty string, got {version!r}"
        )
    # The folder name is the stable identifier (metadata "name" is a human-readable title).
    name = bundle_dir.resolve().name
    if "network_def" not in config:
        raise BundleError(f"{inference_path}: no 'network_def'")
    image_size = _parse_image_size(config.get("image_size"), inference_path)
    kind = "detection" if "detector" in config else "classification"
    try:
        preprocessing = Preprocessing.from_config(config.get("preprocessing"))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{inference_path}: bad 'preprocessing': {exc}") from exc

    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(metadata)
    # Relative paths inside the config (rarely needed at inference) resolve against the bundle.
    parser["bundle_root"] = str(bundle_dir)

    state_dict = _load_state_dict(bundle_dir / WEIGHTS_FILE)

    class_names: tuple[str, ...] = ()
    box_format = DEFAULT_BOX_FORMAT
    detector: torch.nn.Module | None = None
    threshold: float | None = None
    positive_class: str | None = None
    finding: FindingCode | None = None
    decision_threshold: float | None = None
    heatmap_layer: str | None = None
    if kind == "detection":
        detector = _instantiate(parser, "detector", inference_path)
        if not isinstance(detector, torch.nn.Module) or not isinstance(
            getattr(detector, "network", None), torch.nn.Module
        ):
            raise BundleError(
                f"{inference_path}: 'detector' must be a torch Module with a .network, got {type(detector).__name__}"
            )
        if "detector_ops" in config:  # MONAI detection-bundle convention: set_box_selector_parameters etc.
            _instantiate(parser, "detector_ops", inference_path)
        network: torch.nn.Module = detector.network  # type: ignore[assignment]
        threshold = _threshold(config, metadata, inference_path)
        box_format = config.get("box_format", DEFAULT_BOX_FORMAT)
        if box_format not in BOX_FORMATS:
            raise BundleError(
                f"{inference_path}: box_format must be one of {list(BOX_FORMATS)}, got {box_format!r}"
            )
        names = config.get("class_names", list(DETECTION_CLASS_NAMES))
        if not isinstance(names, (list, tuple)) or tuple(names) != DETECTION_CLASS_NAMES:
            raise BundleError(
                f"{inference_path}: detection class_names must be {list(DETECTION_CLASS_NAMES)}, got {names!r}"
            )
        class_names = tuple(names)
    else:
        network = _instantiate(parser, "network_def", inference_path)
        if not isinstance(network, torch.nn.Module):
            raise BundleError(
                f"{inference_path}: 'network_def' is not a torch Module, got {type(network).__name__}"
            )
        names = config.get("class_names")
        if (
            not isinstance(names, (list, tuple))
            or len(names) < 2
            or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)
        ):
            raise BundleError(f"{inference_path}: class_names must list >= 2 distinct class names, got {names!r}")
        class_names = tuple(names)
        default_positive = RSNA_CLASSES[LUNG_OPACITY_INDEX] if class_names == RSNA_CLASSES else None
        positive_class = config.get("positive_class", default_positive)
        if positive_class not in class_names:
            raise BundleError(
                f"{inference_path}: positive_class must be one of {list(class_names)}, got {positive_class!r}"
            )
        finding = _finding(config, class_names, inference_path)
        decision_threshold = _decision_threshold(config, inference_path)
        layer = config.get("heatmap_layer")
        if layer is not None:
            if not isinstance(layer, str) or layer not in dict(network.named_modules()):
                raise BundleError(f"{inference_path}: heatmap_layer {layer!r} is not a module of network_def")
            heatmap_layer = layer

    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"weights {bundle_dir / WEIGHTS_FILE} do not match the network of {inference_path}: {exc}"
        ) from exc

    network.to(dev).eval()
    if detector is not None:
        detector.to(dev).eval()
    for p in network.parameters():
        p.requires_grad_(False)

    bundle = LoadedBundle(
        name=name,
        version=version,
        kind=kind,
        image_size=image_size,
        network=network,
        path=bundle_dir,
        device=dev,
        detector=detector,
        class_names=class_names,
        positive_class=positive_class,
        finding=finding,
        decision_threshold=decision_threshold,
        heatmap_layer=heatmap_layer,
        preprocessing=preprocessing,
        digest=bundle_digest(bundle_dir),
        metadata=metadata,
        score_threshold=threshold,
        box_format=box_format,
    )
    logger.info(
        "bundle loaded",
        extra={
            "bundle": name,
            "version": version,
            "digest": bundle.digest,
            "kind": kind,
            "image_size": image_size,
            "device": str(dev),
            "box_format": box_format if kind == "detection" else None,
        },
    )
    return bundle
