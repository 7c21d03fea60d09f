"""Write the seed-size bundles: the shipped bundles with ``bench/seed_size/overrides.json`` applied
and random weights (issue 15 point 3: speed does not depend on the weights).

The result is a bundles folder the node and every benchmark accept as it is::

    python bench/seed_bundles.py --out /tmp/cxr-bench/seed-bundles
    CXR_NODE_BUNDLES_DIR=/tmp/cxr-bench/seed-bundles cxr-node serve      # the node with seed-size models
    python bench/end_to_end.py --env CXR_NODE_BUNDLES_DIR=/tmp/cxr-bench/seed-bundles ...

Each bundle's ``metadata.json`` gets the version suffix ``+seed-size-random`` and its
``network_data_format`` input shape follows the new ``image_size``; the weights are the network's
initialisation with ``torch.manual_seed(--seed)``. These bundles give nonsense findings: they are
for sizing hardware, never for reading images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO  # noqa: E402

OVERRIDES = HERE / "seed_size" / "overrides.json"
VERSION_SUFFIX = "+seed-size-random"


def seed_config(shipped: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``shipped`` with the top-level keys of ``override`` replaced (keys starting with _ are comments)."""
    unknown = [k for k in override if not k.startswith("_") and k not in shipped]
    if unknown:
        raise ValueError(f"override keys not in the shipped config: {unknown!r}")
    return {**shipped, **{k: v for k, v in override.items() if not k.startswith("_")}}


def write_seed_bundles(out: Path, *, source: Path = REPO / "monai_bundles", seed: int = 0) -> list[Path]:
    """Write one seed-size bundle per entry of ``OVERRIDES`` under ``out``; returns their folders."""
    import torch

    from models.inference.bundle_loader import load_bundle

    overrides = json.loads(OVERRIDES.read_text())
    written = []
    for name, override in overrides.items():
        if name.startswith("_"):
            continue
        src, dst = source / name, out / name
        if not src.is_dir():
            raise FileNotFoundError(f"shipped bundle missing: {src}")
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.pt", "eval", "data"))
        inference = dst / "configs" / "inference.json"
        config = seed_config(json.loads(inference.read_text()), override)
        inference.write_text(json.dumps(config, indent=4) + "\n")
        meta_path = dst / "configs" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["version"] = str(meta["version"]).split("+")[0] + VERSION_SUFFIX
        image = meta.get("network_data_format", {}).get("inputs", {}).get("image")
        if isinstance(image, dict):
            image["spatial_shape"] = list(config["image_size"])
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        # random initialisation of the configured network, saved as the bundle's weights
        network = _network(config, dst, seed)
        (dst / "models").mkdir(exist_ok=True)
        torch.save(network.state_dict(), dst / "models" / "model.pt")
        load_bundle(dst)  # refuse to hand out a bundle the node could not load
        written.append(dst)
    return written


def _network(config: dict[str, Any], bundle: Path, seed: int) -> Any:
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config(config)
    parser["bundle_root"] = str(bundle)
    if "detector" in config:
        return parser.get_parsed_content("detector").network
    return parser.get_parsed_content("network_def")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, required=True, help="bundles folder to write (replaced bundle by bundle)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path in write_seed_bundles(args.out, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
