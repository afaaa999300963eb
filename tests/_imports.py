"""What importing some modules loads, seen from a fresh interpreter (this one has loaded
everything the test run needed already)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence


def modules_loaded_by(modules: Sequence[str]) -> list[str]:
    """The names in ``sys.modules`` (sorted) after a fresh ``python`` imports ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names: list[str] = json.loads(out.stdout)
    return names
