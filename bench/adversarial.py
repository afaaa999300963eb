"""Long versions of the seeded adversarial cases the default test run samples.

Run:  .venv/bin/python bench/adversarial.py [--seeds 2000] [--examples 5000]

* lease schedules with three phantom candidates sorted first (Serf members tagged as
  instances that never gossip) on the in-memory network with loss, duplication, partitions
  and a crashed holder: one holder per connected group, growing epochs, fenced actions,
  and a takeover that never waits a TTL per phantom (``tests/test_lease.py`` runs 100);
* the replay model: an attacker replays every captured datagram at any time while either
  side restarts; none may be accepted twice (``tests/test_gossip_crypto.py`` runs 300);
* forged leases with any expiry: the first live candidate acts within one TTL + skew of
  the write (``tests/test_lease.py`` runs 300).

Pure code only (no sockets, no processes); exits non-zero on the first failure, naming it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_gossip_crypto  # noqa: E402
import test_lease  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2_000, help="phantom lease schedules")
    ap.add_argument("--examples", type=int, default=5_000, help="Hypothesis examples per case")
    args = ap.parse_args()

    t0 = time.monotonic()
    for seed in range(args.seeds):
        test_lease.run_lease_schedule(seed, phantoms=3)
    print(f"{args.seeds} phantom lease schedules: ok ({time.monotonic() - t0:.1f} s)")

    for name, fn in (
        (
            "replay across restarts",
            test_gossip_crypto.test_no_datagram_is_accepted_twice_across_restarts_of_either_side,
        ),
        (
            "forged lease expiry",
            test_lease.test_a_forged_far_future_lease_is_claimed_within_one_ttl_of_being_written,
        ),
    ):
        t0 = time.monotonic()
        # The tests pin their own (smaller) settings; override them for this run only.
        base = fn._hypothesis_internal_use_settings  # type: ignore[attr-defined]
        fn._hypothesis_internal_use_settings = settings(  # type: ignore[attr-defined]
            base, max_examples=args.examples, database=None
        )
        fn()
        print(f"{name}: {args.examples} examples ok ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
