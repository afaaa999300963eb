"""Timing bounds out of the default run: tests measure, ``bench/bounds.py`` checks.

A test that used to assert a duration now calls ``bound(name, seconds, limit)`` next to its
functional assertions. In the default run that records and asserts nothing (a loaded
machine must not fail a test for being slow). ``bench/bounds.py`` runs those tests
with ``GOSSIPMGR_BOUNDS_FILE`` set, which appends each measurement there as a JSON line,
and ``GOSSIPMGR_ENFORCE_BOUNDS=1``, which turns the limit into an assertion again.
"""

from __future__ import annotations

import json
import os


def bound(name: str, seconds: float, limit_s: float) -> None:
    """Record ``seconds`` as the figure ``name``; when enforced, assert it is under ``limit_s``."""
    path = os.environ.get("GOSSIPMGR_BOUNDS_FILE")
    if path:
        rec = {"name": name, "seconds": round(seconds, 3), "limit_s": limit_s}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    if os.environ.get("GOSSIPMGR_ENFORCE_BOUNDS") == "1":
        assert seconds < limit_s, f"{name}: {seconds:.2f} s, bound {limit_s} s"
