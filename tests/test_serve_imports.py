"""Issue 14: ``cxr-node serve`` imports no training, evaluation or plotting code.

The node's image is installed without the ``train`` extra (matplotlib, scikit-learn, tqdm), so the
serve path must work without them. A fresh interpreter in which those packages cannot be imported
(MONAI and pydicom import them optionally when they are installed) runs what the node runs: the
CLI's parser, the service, receive/analyse/deliver modules, both bundles loaded by the inference
engine, one image analysed and its SR + SC built the way the result pool builds them; then no
training, evaluation, phantom or test-harness module of the project may be in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dicom_factory import cxr_like_array, make_dataset, write

REPO = Path(__file__).resolve().parent.parent

#: what the serve path must not import (top-level packages and project subpackages)
FORBIDDEN = (
    "matplotlib",
    "sklearn",
    "tqdm",
    "tensorboard",
    "models.training",
    "models.evaluation",
    "models.phantoms",
    "models.datasets",
    "dicom_node.testing",
)

CHILD = r"""
import json, sys


# as in the node's image (installed without .[train]): these packages are not there (a None entry in
# sys.modules makes `import x` fail and importlib.util.find_spec("x") return None, as for a missing package)
for missing in ("matplotlib", "sklearn", "tqdm", "tensorboard"):
    sys.modules[missing] = None
import pydicom

from dicom_node.cli import build_parser

build_parser()  # imports every sub-command module, as `cxr-node serve` does
import dicom_node.cli.serve, dicom_node.service  # noqa: E401
import dicom_node.delivery.deliver, dicom_node.pipeline.analyse, dicom_node.scp.receive  # noqa: E401
from dicom_node.results.build import build_encoded_results, findings_to_dict
from models.inference.engine import InferenceEngine, default_bundles_dir

engine = InferenceEngine(default_bundles_dir(), device="cpu", decode_workers=1)
try:
    source = sys.argv[1]
    findings = engine.analyse(pydicom.dcmread(source))
    assert findings.analysed, findings
    encoded = build_encoded_results(source, findings_to_dict(findings), None)
    assert len(encoded) == 2, encoded  # SR + SC
finally:
    engine.close()
print("MODULES " + json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))
"""


def _forbidden(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_forbidden_matches_submodules_only_by_dotted_prefix() -> None:
    assert _forbidden(["matplotlib.pyplot", "models.training", "models.trainingx", "tqdm", "models.inference"]) == [
        "matplotlib.pyplot", "models.training", "tqdm"]  # fmt: skip


def test_serve_path_imports_no_training_or_plotting_code(tmp_path: Path) -> None:
    source = write(make_dataset(cxr_like_array(512, 512, seed=3), BodyPartExamined="CHEST", ViewPosition="PA"),
                   tmp_path / "cxr.dcm")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(source)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES "))
    modules = json.loads(line[len("MODULES "):])
    assert "models.inference.engine" in modules and "dicom_node.results.sc.build" in modules  # the path ran
    assert _forbidden(modules) == [], "the serve path imports training/plotting code"
