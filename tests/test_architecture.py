"""The architecture rules hold: import layers (.importlinter) and code shape (tools/check_shape.py).

Both are also run by `tox -e lint`; here they are part of the default run (about 2 s). And
docs/design.md's table of packages agrees with the tree and with what each package imports.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} missing: install the test extras (./dev bootstrap)")
    # cwd goes first on the path, so the gossipmgr found is the one under cwd.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(cwd / ".importlinter")],
        cwd=cwd,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_shape", ROOT / "tools" / "check_shape.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def test_import_contracts_are_kept() -> None:
    out = _lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # core importing a layer above it, and a fake in the product.
        ("core/clock.py", "import gossipmgr.runtime.store", "gossipmgr.core is not allowed"),
        ("runtime/store.py", "import gossipmgr.testing.network", "import gossipmgr.testing"),
        ("serf/rpc.py", "import trio", "gossipmgr.serf.rpc is not allowed to import trio"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    """A copy of the package with one forbidden import added fails the lint, naming it."""
    shutil.copytree(ROOT / "gossipmgr", tmp_path / "gossipmgr")
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / "gossipmgr" / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    out = _lint_imports(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert contract in out.stdout
    assert "BROKEN" in out.stdout


def test_the_no_fakes_contract_covers_the_whole_product() -> None:
    """Every package and module under gossipmgr/ but testing/ is a source of the contract
    that forbids importing gossipmgr.testing (a module added to the tree must be added)."""
    conf = configparser.ConfigParser()
    conf.read(ROOT / ".importlinter")
    listed = conf["importlinter:contract:no-fakes-in-product"]["source_modules"].split()
    pkg = ROOT / "gossipmgr"
    tree = {p.name for p in pkg.iterdir() if (p / "__init__.py").exists()}
    tree |= {p.stem for p in pkg.glob("*.py") if not p.name.startswith("_")}
    assert sorted(listed) == sorted(f"gossipmgr.{m}" for m in tree - {"testing"})


def test_shape_of_the_product_holds() -> None:
    """No new offender, and every baseline entry still offends (the baseline only shrinks)."""
    shape = _shape()
    offences = shape.check_paths(shape.DEFAULT_PATHS)
    baseline = shape.read_baseline()
    new = [str(o) for o in offences if o.key not in baseline]
    stale = sorted(baseline - {o.key for o in offences})
    assert new == [], "new shape offenders (split them, or say why with '# shape: <reason>')"
    assert stale == [], "tools/shape-baseline.txt lists entries that no longer offend"


def _offences(tmp_path: Path, source: str) -> list[str]:
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent(source))
    return [o.what for o in _shape().check_file(f)]


def test_shape_counts_nesting_as_written(tmp_path: Path) -> None:
    four = """\
        def f(xs):
            for x in xs:
                if x:
                    pass
                elif x is None:
                    pass
                else:
                    try:
                        with open(x) as fh:
                            pass
                    except OSError:
                        pass
    """
    assert _offences(tmp_path, four) == []  # elif, else and except open no level
    five = """\
        async def f(xs):
            while True:
                try:
                    async with xs() as c:
                        async for r in c:
                            if r:
                                pass
                except OSError:
                    pass
    """
    assert _offences(tmp_path, five) == ["blocks nest 5 deep (max 4)"]
    closure = """\
        def f(xs):
            for x in xs:
                def g():
                    if x:
                        match x:
                            case 1:
                                pass
    """
    assert _offences(tmp_path, closure) == []  # a match and its cases are one level
    deeper = closure.replace("pass", "with x:\n                                    pass")
    assert _offences(tmp_path, deeper) == ["blocks nest 5 deep (max 4)"]


def test_shape_counts_lengths_and_honours_a_reason(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    assert _offences(tmp_path, "def f():\n" + body) == ["function is 81 lines (max 80)"]
    assert _offences(tmp_path, "def f():  # shape: a table\n" + body) == []
    assert _offences(tmp_path, "def f():  # shape:\n" + body) != []  # a reason is required
    long_module = "x = 1\n" * 501
    assert _offences(tmp_path, long_module) == ["module is 501 lines (max 500)"]
    assert _offences(tmp_path, "# shape: generated table\n" + long_module) == []


def _design_table() -> dict[str, str]:
    """docs/design.md's "Packages, lowest first" table: each name of its first column
    (``core/``, ``errors.py``, ...) -> its whole row."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("### Packages, lowest first", 1)[1].split("**The layering rule.**", 1)[0]
    rows: dict[str, str] = {}
    for row in section.splitlines():
        if row.startswith("| `"):
            for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
                rows[name] = row
    return rows


def test_the_design_table_names_every_package_and_module_of_the_tree() -> None:
    """docs/design.md's architecture table and the tree agree: every package and module
    directly under gossipmgr/ has its row, and every module of a package (and of its
    subpackages, such as ``api/routes/``) is named in that package's row."""
    rows = _design_table()
    pkg = ROOT / "gossipmgr"
    top = {p.name + "/" for p in pkg.iterdir() if (p / "__init__.py").exists()}
    top |= {p.name for p in pkg.glob("*.py") if not p.name.startswith("_")}
    assert sorted(top - set(rows)) == [], "packages or modules without a row"
    assert sorted(set(rows) - top) == [], "rows naming what is not in the tree"
    unnamed = []
    for name in sorted(n for n in top if n.endswith("/")):
        for mod in sorted((pkg / name).rglob("*.py")):
            if mod.stem not in ("__init__", "__main__") and not re.search(
                rf"\b{mod.stem}\b", rows[name]
            ):
                unnamed.append(mod.relative_to(pkg).as_posix())
    assert unnamed == [], "modules the design table does not name"


def test_the_design_table_says_what_each_package_imports() -> None:
    """The table's last column ("may import (of gossipmgr)") lists every package of
    gossipmgr that a row's modules import (a row that says "lower layers", "anything" or
    "everything" is not checked)."""
    import grimp

    graph = grimp.build_graph("gossipmgr", cache_dir=None)
    missing: dict[str, list[str]] = {}
    for name, row in _design_table().items():
        allowed = row.rstrip().rstrip("|").rsplit("|", 1)[1]
        if any(w in allowed for w in ("lower layers", "anything", "everything")):
            continue
        listed = set(re.findall(r"`([a-z_]+)`", allowed))
        here = "gossipmgr." + name.removesuffix("/").removesuffix(".py")
        imported = {
            dep.split(".")[1]
            for mod in graph.modules
            if mod == here or mod.startswith(here + ".")
            for dep in graph.find_modules_directly_imported_by(mod)
            if dep.startswith("gossipmgr.") and not (dep == here or dep.startswith(here + "."))
        }
        if imported - listed:
            missing[name] = sorted(imported - listed)
    assert missing == {}, "imports the design table does not list"
