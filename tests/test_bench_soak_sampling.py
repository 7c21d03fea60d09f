"""bench/paced.py's per-image page faults and CPU of a soak, and bench/common.py's reading of /proc."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import cpu_seconds, minor_faults  # noqa: E402
from paced import per_image_after_warmup  # noqa: E402


def test_faults_and_cpu_per_image_skip_the_warm_up() -> None:
    # (images sent, faults so far, CPU seconds so far): the first 10 % of 100 images are warm-up
    samples = [(0, 1000, 1.0), (5, 9000, 3.0), (10, 10_000, 4.0), (60, 10_500, 9.0), (100, 11_000, 14.0)]
    faults, cpu_ms = per_image_after_warmup(samples)
    assert faults == pytest.approx(1000 / 90) and cpu_ms == pytest.approx(10_000 / 90)
    with pytest.raises(ValueError, match="too few samples"):
        per_image_after_warmup([(100, 5, 1.0)])


def test_this_process_faults_and_cpu_are_read_from_proc() -> None:
    """The same counters the kernel gives a process about itself (getrusage, process_time)."""
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("no /proc")
    buf = np.ones(8 << 20, dtype=np.uint8)  # fresh pages, written
    for _ in range(20):  # some CPU
        buf += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    faults, cpu = minor_faults(os.getpid()), cpu_seconds(os.getpid())
    assert usage.ru_minflt <= faults <= usage.ru_minflt + 200  # a few more since, reading /proc
    assert abs(cpu - (usage.ru_utime + usage.ru_stime)) < 0.05  # clock ticks of 10 ms
