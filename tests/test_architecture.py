"""The package graph, read from the source with `ast`: the core imports neither side, data_prep
never imports recipe, recipe never imports data_prep (the datasets on disk are their contract)."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "data_prep", "recipe")
FORBIDDEN = {"core": {"data_prep", "recipe"}, "data_prep": {"recipe"}, "recipe": {"data_prep"}}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` names anywhere in the file (function bodies too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            package = path.relative_to(ROOT).parent.parts
            base = package[: len(package) - node.level + 1]
            names.add(".".join([*base, node.module] if node.module else base))
    return names


def top_package(module: str) -> str:
    return module.split(".")[0]


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if top_package(module) in FORBIDDEN[package]:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_architecture_allows(package):
    assert violations(package) == []


def test_the_check_sees_imports_hidden_in_function_bodies(tmp_path, monkeypatch):
    """The graph check would be useless if a lazy import inside a function escaped it."""
    src = tmp_path / "core" / "sneaky.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from recipe.train import main\n    import data_prep.prepare\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("core") == [
        "core/sneaky.py imports data_prep.prepare",
        "core/sneaky.py imports recipe.train",
    ]


def test_relative_imports_resolve_to_their_package(tmp_path, monkeypatch):
    src = tmp_path / "data_prep" / "filter" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("from .stage import main\nfrom .. import prepare\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(src) == {"data_prep.filter.stage", "data_prep"}
