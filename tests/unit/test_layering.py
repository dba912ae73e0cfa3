"""Imports point one way through the stages (core -> ... -> cli); nothing imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "itkd_cli"
ORDER = ["core", "recipe", "data", "models", "distill", "train", "evaluate", "export", "pipeline", "cli"]
# Allowed imports beyond "any earlier stage", and earlier stages a stage must NOT import.
FORBIDDEN = {"models": {"data"}, "distill": {"data"}, "evaluate": {"train"}, "export": {"train", "distill"}}


def _stage_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "itkd_cli" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("stage", ORDER)
def test_stage_imports_point_down(stage: str) -> None:
    rank = ORDER.index(stage)
    for path in sorted((PKG / stage).rglob("*.py")):
        for dep in _stage_imports(path) - {stage}:
            assert ORDER.index(dep) < rank, f"{path.relative_to(PKG)} imports the later stage {dep}"
            assert dep not in FORBIDDEN.get(stage, set()), f"{path.relative_to(PKG)} must not import {dep}"


def test_no_module_over_400_lines() -> None:
    long = [f"{p.relative_to(PKG)} ({n})" for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400]
    assert not long, f"split by responsibility: {long}"
