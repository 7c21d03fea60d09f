"""Bounded atheris run of ``fuzz/fuzz_decode.py`` (the decode path must only raise ImageDecodeError)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import REPO, SCALE, report, scaled

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")

RUNS = scaled(80000, 20000)


def test_fuzz_decode_bounded_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cmd = [sys.executable, str(REPO / "fuzz" / "fuzz_decode.py"), f"-runs={RUNS}", "-max_len=131072",
           "-timeout=20", "-rss_limit_mb=3072", "-seed=20261123", f"-artifact_prefix={tmp_path}/", str(corpus)]  # fmt: skip
    # the same inputs every run: libFuzzer's -seed fixes its mutations, PYTHONHASHSEED the hashing of str
    # and bytes (set orders) in the code under test, whose coverage the mutations follow
    env = {**os.environ, "PYTHONHASHSEED": "20261123"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    out = res.stdout + res.stderr
    found = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*")) + sorted(tmp_path.glob("oom-*"))
    crashes = [p.name for p in found]
    # the inputs themselves, so that a finding in CI (whose temporary folders are gone) can be replayed:
    # base64 -d > input.dcm; python fuzz/fuzz_decode.py input.dcm
    inputs = "\n".join(f"{p.name} (base64): {base64.b64encode(p.read_bytes()).decode()}" for p in found)
    assert res.returncode == 0 and not crashes, f"fuzzer finding ({res.returncode}): {crashes}\n{out[-3000:]}\n{inputs}"
    done = re.search(r"Done (\d+) runs in (\d+) second", out)
    assert done and int(done.group(1)) >= RUNS, out[-2000:]
    report("fuzz: atheris on dcmread + load_source_image", tried=int(done.group(1)), findings=len(crashes),
           seconds=int(done.group(2)), scale_note=f"{RUNS} runs at scale {SCALE}")  # fmt: skip
