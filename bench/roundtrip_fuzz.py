"""Long API -> gossip round-trip fuzz: every value the API accepts is visible on a peer.

Runs ``tests/test_value_limits.py::test_fuzz_accepted_values_replicate_refused_ones_change_nothing``
(an instance serving the real API over HTTP, gossiping over real UDP on loopback with a
second one) with many more Hypothesis examples than the default test run's 40:

    .venv/bin/python bench/roundtrip_fuzz.py [--examples 2000]

Each example PUTs one generated JSON value (deep, wide, long strings, unicode, lone
surrogates, integers around the msgpack range, floats, records over the encoded size
limit) or POSTs it as an extra-var; a 200 must reach the peer with an equal value, a
refusal must be a 4xx with an error text and change nothing. Prints how many were accepted
and refused; exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_value_limits.py::test_fuzz_accepted_values_replicate_refused_ones_change_nothing"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2000)
    args = p.parse_args()
    env = dict(os.environ, HYPOTHESIS_ROUNDTRIP_EXAMPLES=str(args.examples))
    cmd = [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
