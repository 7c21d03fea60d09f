"""Each bundle runs on its own: ``python -m monai.bundle run`` with MONAI and the bundle folder alone.

The child interpreter is started with ``-S -I`` (no site processing: the venv's editable-install
``.pth`` finder for this project never runs; PYTHON* variables ignored), from the bundle folder,
with ``sys.path`` = bundle folder + the standard library + the venv's site-packages. It must not
be able to import ``dicom_node`` (or ``models.inference``), must write predictions for a phantom
DICOM, and must load no module from this repository outside the bundle folder. The predictions
must agree with the node's engine on the same image.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pydicom
import pytest

from models.bundle_run import BUNDLES_DIR

REPO = BUNDLES_DIR.parent

#: Run in the child: confine sys.path, check the project is invisible, run monai.bundle, report.
BOOTSTRAP = r"""
import importlib.util, json, runpy, sys
bundle, report, site_dirs, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
sys.path[:] = [bundle] + [p for p in sys.path if p] + site_dirs
visible = {m: importlib.util.find_spec(m) is not None for m in ("dicom_node", "models.inference", "models.imaging")}
sys.argv = ["monai.bundle", *argv]
code = 0
try:
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code or 0
files = sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""})
with open(report, "w") as f:
    json.dump({"visible": visible, "exit": code, "files": files, "path": sys.path}, f)
sys.exit(code)
"""


def _standalone_run(bundle: Path, image: Path, out: Path, report: Path) -> dict:
    paths = sysconfig.get_paths()
    site_dirs = sorted({paths["purelib"], paths["platlib"]})
    cmd = [sys.executable, "-S", "-I", "-c", BOOTSTRAP, str(bundle), str(report), json.dumps(site_dirs),
           "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(image), "--output_dir", str(out), "--device", "cpu"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out.parent)}  # no PYTHONPATH, no PYTHONHOME
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(report.read_text())
    assert rep["visible"] == {"dicom_node": False, "models.inference": False, "models.imaging": False}, rep["visible"]
    repo = str(REPO.resolve())
    # the installed packages may live inside the checkout (CI's .venv): they are MONAI's world, not ours
    installed = tuple(str(Path(d).resolve()) + "/" for d in site_dirs) + (str(Path(sys.prefix).resolve()) + "/",)
    outside = [f for f in rep["files"] if f.startswith(repo) and not f.startswith(installed)
               and not f.startswith(str(bundle.resolve()) + "/")]  # fmt: skip
    assert outside == [], outside  # nothing of this project but the bundle folder was imported
    assert any(f.startswith(str(bundle.resolve()) + "/scripts/") for f in rep["files"])
    return rep


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from models.phantoms.synth import write_rsna_dataset

    root = tmp_path_factory.mktemp("standalone_phantoms")
    write_rsna_dataset(root, 4, 4242, size=256)
    return sorted((root / "stage_2_train_images").glob("*.dcm"))


@pytest.fixture(scope="module")
def engine():
    from models.inference.engine import InferenceEngine

    eng = InferenceEngine(BUNDLES_DIR, device="cpu")
    yield eng
    eng.close()


def test_classification_bundle_runs_alone_and_matches_the_engine(phantoms: list[Path], engine, tmp_path: Path) -> None:
    bundle = (BUNDLES_DIR / "cxr_classification").resolve()
    out = tmp_path / "cls"
    _standalone_run(bundle, phantoms[0].parent, out, tmp_path / "report.json")
    records = {r["id"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert len(records) == len(phantoms) and (out / "predictions.csv").is_file()
    for path in phantoms:
        ds = pydicom.dcmread(path)
        r = records[str(ds.SOPInstanceUID)]
        assert r["analysed"], r
        assert sum(r["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["probability"] == pytest.approx(engine.analyse(ds).probability, abs=2e-3)


def test_detection_bundle_runs_alone_and_matches_the_engine(phantoms: list[Path], engine, tmp_path: Path) -> None:
    bundle = (BUNDLES_DIR / "cxr_opacity_detection").resolve()
    out = tmp_path / "det"
    _standalone_run(bundle, phantoms[0].parent, out, tmp_path / "report.json")
    records = {r["id"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert len(records) == len(phantoms)
    n_boxes = 0
    for path in phantoms:
        ds = pydicom.dcmread(path)
        r = records[str(ds.SOPInstanceUID)]
        assert r["analysed"], r
        ours = sorted((b["x"], b["y"], b["width"], b["height"]) for b in r["boxes"])
        theirs = sorted((b.x, b.y, b.width, b.height) for b in engine.analyse(ds).boxes)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a == pytest.approx(b, abs=0.5)
        n_boxes += len(ours)
    assert n_boxes > 0  # the phantoms carry opacities the shipped detector finds


def test_one_image_file_is_a_dataset(phantoms: list[Path], tmp_path: Path) -> None:
    """``--dataset_dir`` may name one image file."""
    bundle = (BUNDLES_DIR / "cxr_classification").resolve()
    out = tmp_path / "one"
    _standalone_run(bundle, phantoms[1], out, tmp_path / "report.json")
    assert [p.stem for p in out.glob("*.json")] == [str(pydicom.dcmread(phantoms[1]).SOPInstanceUID)]


@pytest.mark.parametrize("name", ["cxr_classification", "cxr_opacity_detection"])
def test_bundle_configs_reference_only_monai_and_the_bundle(name: str) -> None:
    """Every ``_target_`` of a bundle config names MONAI, torch or ``scripts.`` (the bundle's own); no
    expression or reference names this project's packages."""
    for cfg in (BUNDLES_DIR / name / "configs").glob("*.json"):
        for key, value in _walk(json.loads(cfg.read_text())):
            if key == "_target_":
                assert value.split(".")[0] in ("monai", "torch", "scripts"), (cfg, value)
            elif value.startswith(("$", "@", "%")):
                for word in ("models.", "dicom_node", "bundle_run"):
                    assert word not in value, (cfg, key, value)


def _walk(obj: object, key: str = ""):
    """(key, string value) of every string in a JSON document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)
    elif isinstance(obj, str):
        yield key, obj


def test_the_node_never_imports_a_bundle_script(engine) -> None:
    """Both bundles have a ``scripts`` package; the engine (both bundles loaded) imports neither."""
    assert engine is not None
    roots = [str((BUNDLES_DIR / name / "scripts").resolve()) for name in ("cxr_classification", "cxr_opacity_detection")]
    loaded = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    assert [f for f in loaded if f.startswith(tuple(roots))] == []
