#!/usr/bin/env python3
"""The shape rules of gossipmgr's code (docs/design.md, "Architecture").

    python tools/check_shape.py                  # check gossipmgr/ against the baseline
    python tools/check_shape.py --no-baseline    # every offender, baseline or not
    python tools/check_shape.py --write-baseline # record today's offenders as the baseline
    python tools/check_shape.py FILE_OR_DIR ...  # check other paths

Rules, for every ``.py`` file:

- a module has at most 500 lines;
- a function (or method) has at most 80 lines, from its ``def`` line to its last line;
- inside a function, compound statements nest at most 4 deep. Each ``if``, ``for``,
  ``while``, ``with``, ``try``, ``match``, nested ``def`` and ``class`` opens one level
  (``elif``/``else``/``except``/``finally``/``case`` clauses do not open another); a nested
  function is counted within the function that holds it.

An exception is written where it applies, with its reason: ``# shape: <why>`` on the
``def`` line (or any line of the signature, or the line above the first decorator) exempts
that function; the same comment in a module's first three lines exempts the module's length.

The baseline (tools/shape-baseline.txt) lists offenders known when the rules came in, one
``path`` (module length) or ``path::qualname`` (function) a line. They are reported as known
and do not fail the check; a baseline entry that no longer offends does fail it, so the
list only shrinks. Exit status: 0 clean, 1 offenders (or stale baseline entries).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_DEPTH = 4
MARK = "# shape:"

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tools" / "shape-baseline.txt"
DEFAULT_PATHS = [ROOT / "gossipmgr"]

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCKS = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.TryStar,
    ast.Match,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
)


@dataclass(frozen=True)
class Offence:
    path: str  # relative to the repository root, with forward slashes
    line: int
    qualname: str  # "" for the module itself
    what: str

    @property
    def key(self) -> str:
        return f"{self.path}::{self.qualname}" if self.qualname else self.path

    def __str__(self) -> str:
        where = f" {self.qualname}" if self.qualname else ""
        return f"{self.path}:{self.line}:{where} {self.what}"


def _marked(lines: list[str], first: int, last: int) -> bool:
    """Whether a ``# shape: <reason>`` comment with a reason is on lines first..last (1-based)."""
    for text in lines[max(first - 1, 0) : last]:
        at = text.find(MARK)
        if at >= 0 and text[at + len(MARK) :].strip():
            return True
    return False


def _children(node: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """The statements directly under ``node``, each with whether it opens a level here."""
    for field in ("body", "orelse", "finalbody", "handlers", "cases"):
        for child in getattr(node, field, ()):
            if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                yield from ((c, True) for c in child.body)  # a clause of its statement
                continue
            # An ``elif`` is an If alone in the orelse, at the column of the If it continues.
            is_elif = (
                field == "orelse"
                and isinstance(node, ast.If)
                and isinstance(child, ast.If)
                and child.col_offset == node.col_offset
            )
            yield child, not is_elif


def _depth(node: ast.AST) -> int:
    """How deep compound statements nest under ``node`` (a function: its body is depth 0)."""
    deepest = 0
    for child, _ in _children(node):
        if isinstance(child, _BLOCKS):
            deepest = max(deepest, _block_depth(child))
    return deepest


def _block_depth(block: ast.AST) -> int:
    """Levels opened by ``block`` and everything under it (``block`` itself counts 1)."""
    deepest = 1
    for child, opens in _children(block):
        if isinstance(child, _BLOCKS):
            below = _block_depth(child)
            deepest = max(deepest, 1 + below if opens else below)
    return deepest


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Outermost functions and methods (nested ones are counted within them), by qualname."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _FUNCS):
                yield prefix + child.name, child
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            elif not isinstance(child, ast.expr):
                yield from walk(child, prefix)  # if TYPE_CHECKING:, try: at module level

    for name, fn in walk(tree, ""):
        assert isinstance(fn, _FUNCS)
        yield name, fn


def check_file(path: Path) -> list[Offence]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    try:
        rel = path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        rel = path.as_posix()
    out: list[Offence] = []
    if len(lines) > MAX_MODULE_LINES and not _marked(lines, 1, 3):
        out.append(Offence(rel, 1, "", f"module is {len(lines)} lines (max {MAX_MODULE_LINES})"))
    for qualname, fn in _functions(ast.parse(text, filename=str(path))):
        first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
        if _marked(lines, first - 1, fn.body[0].lineno - 1 if fn.body else fn.lineno):
            continue
        end = fn.end_lineno or fn.lineno
        size = end - fn.lineno + 1
        if size > MAX_FUNCTION_LINES:
            what = f"function is {size} lines (max {MAX_FUNCTION_LINES})"
            out.append(Offence(rel, fn.lineno, qualname, what))
        depth = _depth(fn)
        if depth > MAX_DEPTH:
            what = f"blocks nest {depth} deep (max {MAX_DEPTH})"
            out.append(Offence(rel, fn.lineno, qualname, what))
    return out


def check_paths(paths: list[Path]) -> list[Offence]:
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return [o for f in files for o in check_file(f)]


def read_baseline(path: Path = BASELINE) -> set[str]:
    if not path.exists():
        return set()
    entries = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {e for e in entries if e}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("paths", nargs="*", type=Path, help="files or directories (default gossipmgr/)")
    ap.add_argument("--no-baseline", action="store_true", help="report baseline entries too")
    ap.add_argument("--write-baseline", action="store_true", help="rewrite the baseline file")
    args = ap.parse_args(argv)
    offences = check_paths(args.paths or DEFAULT_PATHS)
    if args.write_baseline:
        keys = sorted({o.key for o in offences})
        header = "# Shape offenders known when the rules came in (tools/check_shape.py).\n"
        BASELINE.write_text(header + "".join(k + "\n" for k in keys))
        print(f"wrote {len(keys)} entries to {BASELINE.relative_to(ROOT)}")
        return 0
    baseline = set() if args.no_baseline else read_baseline()
    new = [o for o in offences if o.key not in baseline]
    known = [o for o in offences if o.key in baseline]
    stale = sorted(baseline - {o.key for o in offences}) if not args.paths else []
    for o in known:
        print(f"{o} [baseline]")
    for o in new:
        print(o)
    for key in stale:
        print(f"{key}: in tools/shape-baseline.txt but no longer offends: remove the line")
    print(f"shape: {len(new)} new, {len(known)} in the baseline, {len(stale)} stale entries")
    return 1 if new or stale else 0


if __name__ == "__main__":
    sys.exit(main())
