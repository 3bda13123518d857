"""Imports go one way (README, Layout): nn → ops → torch.ops.attnkern → csrc; the references depend on
torch alone; only attnkern._extension touches the compiled extension and its build config."""

import ast
from pathlib import Path
from typing import Set

import pytest

import attnkern

PACKAGE = Path(attnkern.__file__).parent


def attnkern_imports(path: Path) -> Set[str]:
    """The attnkern modules a source file imports (relative imports resolved; ``from X import name``
    counted as X.name, which is X's submodule where there is one)."""
    package = ".".join(("attnkern",) + path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "attnkern" or name.startswith("attnkern.")}


def sources(folder: str):
    return sorted((PACKAGE / folder).rglob("*.py")) if folder.endswith("/") else [PACKAGE / folder]


# (files, attnkern modules they may not import: a name and everything under it)
RULES = [
    ("reference/", ["attnkern.ops", "attnkern.nn", "attnkern.export", "attnkern.models", "attnkern.bench",
                    "attnkern.integrations", "attnkern._extension", "attnkern._C", "attnkern._build_config"]),
    ("_window_geometry.py", ["attnkern"]),
    ("ops/", ["attnkern.nn", "attnkern.models", "attnkern.bench", "attnkern.integrations", "attnkern._C",
              "attnkern._build_config"]),
    ("nn/", ["attnkern.reference", "attnkern.models", "attnkern.bench", "attnkern.integrations", "attnkern._C",
             "attnkern._build_config"]),
    ("models/", ["attnkern.reference", "attnkern.bench", "attnkern.integrations", "attnkern._C",
                 "attnkern._build_config"]),
]


@pytest.mark.parametrize("folder,forbidden", RULES, ids=[rule[0] for rule in RULES])
def test_imports_go_one_way(folder, forbidden):
    files = sources(folder)
    assert files
    for path in files:
        bad = sorted(name for name in attnkern_imports(path)
                     if any(name == f or name.startswith(f + ".") for f in forbidden))
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
