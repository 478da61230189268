"""The layout's rules (docs/architecture.md), held in CI: small product modules, the imports allowed between
packages, and tests that share helpers only through tests/support.py and conftest."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from .support import ROOT

MAX_LINES = 450
# Product modules allowed past MAX_LINES, and why. Data may be long; code is split along its ideas, and an
# entry goes once its module is split (test_every_exception_is_still_needed says when).
LONG_MODULES = {
    "api/openapi.py": "data: the OpenAPI document, written out as plain dicts",
}
# The packages of the pipeline, query, retention, commands and API: what the shared format and the
# store backends must never import.
ABOVE_FORMAT_AND_STORE = ("shipper.agent", "shipper.liveness", "shipper.spool", "shipper.quota", "shipper.watcher",
                          "shipper.watcher_state", "shipper.query", "shipper.retention", "shipper.commands", "api")


def _files(*dirs: str) -> Iterator[Path]:
    for d in dirs:
        yield from sorted(p for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it (a function's import too), as absolute dotted names; for
    `from package import name`, also `package.name` (the name may be a module)."""
    package = list(path.relative_to(ROOT).parts[:-1])  # of a module and of an __init__.py alike
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def _is_test_file(module: str) -> bool:
    """`tests.test_x` (however it was written: `.test_x`, `from . import test_x`), or `test_x` from the rootdir."""
    parts = module.split(".")
    return (parts[0] == "tests" and parts[-1].startswith("test_")) or parts[0].startswith("test_")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_product_module_passes_the_line_limit() -> None:
    over = {_rel(p): _lines(p) for p in _files("shipper", "api")
            if _lines(p) > MAX_LINES and _rel(p) not in LONG_MODULES}
    assert not over, (f"modules over {MAX_LINES} lines: {over}; split each along its ideas (docs/architecture.md), "
                      "or, for data, add it to LONG_MODULES with the reason")


def test_no_web_file_passes_the_line_limit() -> None:
    """The page's files (api/web/: plain JS, CSS and HTML) are held to the same rule as the Python modules."""
    web = ROOT / "api" / "web"
    over = {_rel(p): _lines(p) for p in sorted(web.iterdir()) if p.suffix in (".js", ".css", ".html")
            and _lines(p) > MAX_LINES}
    assert not over, f"web files over {MAX_LINES} lines: {over}; split each by what its parts do"


def test_every_exception_is_still_needed() -> None:
    stale = [m for m in LONG_MODULES if not (ROOT / m).exists() or _lines(ROOT / m) <= MAX_LINES]
    assert not stale, f"{stale} no longer pass {MAX_LINES} lines: remove them from LONG_MODULES"


def test_no_test_imports_another_test_file() -> None:
    wrong = {_rel(p): sorted(m for m in _imports(p) if _is_test_file(m)) for p in _files("tests")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{wrong}: move what tests share into tests/support.py (or a fixture in conftest.py)"


def test_format_and_store_import_nothing_above_them() -> None:
    wrong = {_rel(p): sorted(m for m in _imports(p) if _within(m, ABOVE_FORMAT_AND_STORE))
             for p in _files("shipper/format", "shipper/store")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{wrong}: shipper/format and shipper/store are below every other package"


def test_only_the_commands_import_the_api_and_the_watcher_no_retention() -> None:
    wrong = {_rel(p): sorted(m for m in _imports(p) if _within(m, ("api",)))
             for p in _files("shipper") if not _rel(p).startswith("shipper/commands/")}
    wrong = {k: v for k, v in wrong.items() if v}
    assert not wrong, f"{wrong}: only shipper/commands (the composition root) imports api"
    retention = {_rel(p): sorted(m for m in _imports(p) if _within(m, ("shipper.retention",)))
                 for p in _files("shipper/watcher")}
    retention = {k: v for k, v in retention.items() if v}
    assert not retention, f"{retention}: the watcher imports no retention; `logship watch` composes them side by side"


def test_the_checks_see_what_they_check() -> None:
    """The import scan finds imports of every form (so the rules above cannot pass by seeing nothing)."""
    found = _imports(ROOT / "shipper/store/s3.py")
    assert {"shipper.errors", "shipper.store.s3errors", "shipper.store.base"} <= found, found
    assert "shipper.watcher_state" in _imports(ROOT / "api/metrics.py")
    assert "shipper.errors" in _imports(ROOT / "shipper/watcher/ship.py")  # `from ..errors import` in a package
    assert "tests.support" in _imports(Path(__file__))
    assert _is_test_file("tests.test_cli_client") and _is_test_file("test_cli_client")
    assert not _is_test_file("aiohttp.test_utils") and not _is_test_file("tests.support")
