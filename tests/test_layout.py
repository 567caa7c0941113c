"""The layout's rules, read from the package's own source (README "Layout").

- Data flows one way: client -> catalog/source -> recorder/store -> exports. ``store/`` imports no
  client, source or export module; ``sources/`` no client or export; ``export/`` no client or source;
  ``audit/`` (reads the store) no client, source or export.
- Every statement that differs between SQLite and PostgreSQL is in ``store/dialects.py``: nowhere
  else does code compare a dialect's or back end's name, except engine creation (``store/engine.py``)
  and the PostgreSQL-only roles (``store/roles.py``).
- Neighbours use public names only: no module imports a ``_private`` name of another, nor reaches
  into a store's private attributes.
- Database errors become one-line messages in one place (``store/engine.py``); the environment is
  read in one place (``settings.py``).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oneprov"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.relative_to(PACKAGE).parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _imported_modules(path: Path) -> set[str]:
    """The ``oneprov`` modules a file imports, as paths relative to the package ('store/engine.py' ...)."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level + 1])
            elif node.module and node.module.split(".")[0] == "oneprov":
                base = []
            else:
                continue
            parts = base + ((node.module or "").split(".") if node.module else [])
            if not node.level:
                parts = parts[1:]
            found.add("/".join(parts) or "__init__")
            found.update("/".join([*parts, alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "oneprov":
                    found.add("/".join(alias.name.split(".")[1:]) or "__init__")
    return found


FORBIDDEN = {  # a folder: the folders (and top modules) it must not import
    "store": ("client", "sources", "export", "cli", "demo"),
    "sources": ("client", "export", "cli", "demo"),
    "export": ("client", "sources", "cli", "demo"),
    "audit": ("client", "sources", "export", "cli", "demo"),
}


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_data_flows_one_way(path):
    top = path.relative_to(PACKAGE).parts[0]
    if top not in FORBIDDEN:
        return
    wrong = sorted(m for m in _imported_modules(path) if m.split("/")[0] in FORBIDDEN[top])
    assert not wrong, f"{_rel(path)} imports {wrong}: data flows client -> catalog/source -> store -> exports"


DIALECT_TEST = re.compile(r"""(?:dialect(?:\.name)?|get_backend_name\(\)|backend)\s*[!=]=|[!=]=\s*["'](?:sqlite|postgresql)["']""")
DIALECT_ALLOWED = {"store/dialects.py", "store/engine.py", "store/roles.py"}


def test_dialect_differences_live_in_one_module():
    found = [f"{_rel(p)}:{i}: {line.strip()}" for p in MODULES if _rel(p) not in DIALECT_ALLOWED
             for i, line in enumerate(p.read_text().splitlines(), 1) if DIALECT_TEST.search(line)]
    assert not found, "dialect branches outside store/dialects.py:\n" + "\n".join(found)
    engine = (PACKAGE / "store" / "engine.py").read_text()
    # engine.py branches on the back end only to make URLs and engines
    assert not re.search(r"dialect(?:\.name)?\s*[!=]=", engine)


def test_the_check_itself_finds_a_branch(tmp_path):
    """The pattern above is not vacuous: it catches each way the code used to branch."""
    for line in ('if conn.dialect.name == "postgresql":', 'if self.dialect != "postgresql":',
                 'x = a if dialect == "sqlite" else b', 'if url.get_backend_name() == "sqlite":'):
        assert DIALECT_TEST.search(line), line


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_neighbours_use_public_names(path):
    tree = ast.parse(path.read_text())
    private = [f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}"
               for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    reached = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
               and ast.unparse(node.value) in ("store", "db", "self.store", "self.db", "catalog", "recorder")]
    assert not private and not reached, f"{_rel(path)} uses private names of its neighbours: {private + reached}"


def test_errors_and_environment_read_in_one_place():
    first_lines = [_rel(p) for p in MODULES if "splitlines()[0]" in p.read_text()]
    assert first_lines == ["store/engine.py"]
    environment = [_rel(p) for p in MODULES if re.search(r"os\.environ(?:\.get)?[\[(]|os\.getenv\(", p.read_text())
                   and _rel(p) != "settings.py"]
    # demo.py sets ONE_REVISION_LAST_BEFORE for its own example (named through settings)
    assert environment == ["demo.py"]
    assert "settings.REVISION_CUTOFF_ENV" in (PACKAGE / "demo.py").read_text()
