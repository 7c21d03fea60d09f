"""bench/profile_side_by_side.py reads every row of a bench/profile_stages.py table, the sums included."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from profile_side_by_side import rows_of  # noqa: E402

TABLE = """
| stage | wall ms per image | CPU ms per image | least CPU ms of the repeats |
|---|---:|---:|---:|
| decode (load_source_image) | 10.2 | 10.2 | 9.8 |
| receive: C-STORE into the node's SCP, spool file, journal row (storescu, one association) | 20.0 | 5.4 | 5.1 |
| receive as Orthanc forwards a one-image study: association with Orthanc's 127 contexts, C-STORE (per image) | 102.5 | 14.8 | 13.9 |
| **outside the model forward** (sum of: decode; receive: C-STORE into the node's SCP) | | **50.7** | **48.1** |
| **outside the model forward, one-image studies forwarded by Orthanc** (the association row in place) | | **60.1** | **57.0** |
"""


def test_rows_and_the_sums_are_read() -> None:
    rows = rows_of(TABLE)
    assert rows == {
        "decode": (10.2, 9.8),
        "receive": (5.4, 5.1),
        "receive as Orthanc forwards a one-image study": (14.8, 13.9),
        "outside the model forward": (50.7, 48.1),  # the sums' empty wall cell ("| |") was not read before
        "outside the model forward, one-image studies forwarded by Orthanc": (60.1, 57.0),
    }
