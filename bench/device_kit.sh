#!/usr/bin/env bash
# What a lent GPU machine (the workplace's `device` tool) lacks to run bench/gpu_suite.py, fetched here
# into the ignored folder .whl/ of this checkout, and the command to run there.
#
# That machine (../.library/device/KINDS.md) has Python 3.12 with PyTorch, torchvision, numpy, pillow,
# httpx, pyyaml, prometheus-client and packaging, but none of the node's DICOM and MONAI packages, no
# virtualenv of ours (the 5.5 GB .venv cannot travel: 64 MiB at most go) and no network. This fetches
# those packages as Python 3.12 manylinux wheels (~18 MB); the device command installs them into
# /tmp/site with pip --no-index and runs the whole suite on the GPU, its end-to-end and paced steps with
# pynetdicom in the places of Orthanc and storescu, which are not there either (bench/python_peers.py,
# BENCHMARKS.md section 5).
#
#   bash bench/device_kit.sh            # then device run with carry [".whl"] and the printed command
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# The pins of pyproject.toml, less what the device has, and what they need that it lacks (their
# Requires-Dist, read from the wheels: termcolor for fire, the pydantic family, typing-extensions >= 4.16
# for pydantic-core). tests/test_device_kit.py checks this list against pyproject.toml.
# on the device already: torch torchvision numpy pillow httpx pyyaml prometheus-client
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl \
    "monai>=1.6,<1.7" "pydicom>=3.0,<4" "highdicom>=0.28,<0.29" "pynetdicom==3.0.4" \
    "pylibjpeg>=2.1,<3" "pylibjpeg-libjpeg>=2.5,<3" "pylibjpeg-openjpeg>=2.6,<3" "pylibjpeg-rle>=2.2,<3" \
    "pyjpegls>=1.4" "pyorthanc>=1.23,<2" "pydantic>=2.7,<3" pydantic-core "pydantic-settings>=2.16,<3" \
    python-dotenv typing-inspection annotated-types "typing-extensions>=4.16" fire termcolor
echo "wheels: $(ls .whl | wc -l), $(du -sh .whl | cut -f1); tracked files: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) (64 MiB travel at most)"
cat <<'CMD'
device run, carry [".whl"], timeout_s 600:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && nvidia-smi && python3 bench/gpu_suite.py --out "$OUT"
CMD
