"""``bench/profile_stages.py`` on several code trees, interleaved, each run with a host calibration.

This VM is charged the time its host takes from it (no steal time is reported), so absolute CPU
figures swing by ±30 % from minute to minute. Every run here is preceded and followed by a fixed
pure-Python loop (5 M additions; ~400-500 ms on a quiet host, 600-860 ms on a busy one), and
``--quiet-below MS`` waits, for at most ``--max-wait`` seconds per round, until two loops in a row take
less than MS before the round's runs start. Prints each run's calibration and "outside the model
forward" sums, then the median over the runs of each stage's median and the least of each stage.

    python bench/profile_side_by_side.py --tree main=$PWD --tree e9a=/tmp/base --rounds 4 --quiet-below 500
    python bench/profile_side_by_side.py --tree main=$PWD --tree c8f=/tmp/c8f \\
        --tree-option c8f=--no-gc-freeze --tree-env c8f=CXR_BENCH_DELIVER_AS_BEFORE=1 --rounds 5

A baseline tree is ``git archive <commit> | tar -x -C DIR`` with this tree's ``.venv`` linked in; this
script copies its ``profile_stages.py``, ``stage_io.py`` and ``common.py`` into each tree's ``bench/``,
except for the trees named by ``--own-scripts`` (trees whose modules predate this script's imports, run
with the bench scripts of their time).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
_ROW = re.compile(r"^\| (.+?) \| ?([\d.]*) ?\| \*?\*?([\d.]+)\*?\*? \| \*?\*?([\d.]+)\*?\*? \|$")


def calibration_ms() -> float:
    """CPU ms of a fixed pure-Python loop in a fresh interpreter (the host's state, not the code's)."""
    code = "import time\nc=time.process_time()\ns=0\nfor i in range(5_000_000): s+=i\nprint((time.process_time()-c)*1000)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def rows_of(output: str) -> dict[str, tuple[float, float]]:
    """{stage: (CPU ms median, least)} from a profile_stages.py table."""
    out = {}
    for line in output.splitlines():
        m = _ROW.match(line)
        if m:
            out[m.group(1).split(" (")[0].split(":")[0].replace("**", "")] = (float(m.group(3)), float(m.group(4)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH (repeat; run in this order)")
    p.add_argument("--tree-option", action="append", default=[], help="NAME=OPTION for that tree's runs")
    p.add_argument("--tree-env", action="append", default=[], help="NAME=VAR=VALUE for that tree's runs")
    p.add_argument("--own-scripts", action="append", default=[], metavar="NAME",
                   help="run that tree's own bench scripts instead of copying this tree's into it (a tree older "
                        "than this script's profile_stages.py, with the scripts of its time put in its bench/)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quiet-below", type=float, default=None, help="wait for calibration loops under this many ms")
    p.add_argument("--max-wait", type=float, default=120.0)
    p.add_argument("--scratch", default="/tmp/cxr-bench")
    args = p.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree)
    options: dict[str, list[str]] = collections.defaultdict(list)
    for item in args.tree_option:
        name, option = item.split("=", 1)
        options[name].append(option)
    envs: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for item in args.tree_env:
        name, var, value = item.split("=", 2)
        envs[name][var] = value
    for name, path in trees.items():
        if Path(path).resolve() != HERE.parent and name not in args.own_scripts:
            for script in ("profile_stages.py", "stage_io.py", "common.py", "orthanc_like_scu.py", "orthanc_contexts.json"):
                shutil.copy(HERE / script, Path(path) / "bench" / script)
    runs: dict[str, list[dict[str, tuple[float, float]]]] = collections.defaultdict(list)
    for round_ in range(1, args.rounds + 1):
        if args.quiet_below is not None:
            deadline = time.monotonic() + args.max_wait
            while time.monotonic() < deadline:
                if calibration_ms() < args.quiet_below and calibration_ms() < args.quiet_below:
                    break
                time.sleep(5)
        for name, path in trees.items():
            before = calibration_ms()
            cmd = [str(Path(path) / ".venv/bin/python"), "bench/profile_stages.py", "--n", "16", "--batch", "8",
                   "--repeats", str(args.repeats), "--scratch", args.scratch, *options[name]]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(path), **envs[name]}
            result = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True, check=True)
            after = calibration_ms()
            rows = rows_of(result.stdout)
            runs[name].append(rows)
            total = rows.get("outside the model forward", (float("nan"), float("nan")))
            print(f"round {round_} {name} {time.strftime('%H:%M:%S', time.gmtime())} UTC calibration "
                  f"{before:.0f} / {after:.0f} ms: outside the model forward {total[0]:.1f} / {total[1]:.1f}", flush=True)  # fmt: skip
    names = list(trees)
    print("\n| stage | " + " | ".join(f"{n} median | {n} least" for n in names) + " |")
    print("|---|" + "---:|" * (2 * len(names)))
    for stage in runs[names[0]][0]:
        cells = []
        for n in names:
            values = [r[stage] for r in runs[n] if stage in r]
            if not values:  # a row that tree's script does not have
                cells += ["–", "–"]
                continue
            cells += [f"{statistics.median(v[0] for v in values):.1f}", f"{min(v[1] for v in values):.1f}"]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
