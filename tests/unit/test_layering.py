"""Imports point one way through the stages (core -> ... -> cli); nothing imports cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "itkd_cli"
ORDER = ["core", "recipe", "data", "models", "distill", "train", "evaluate", "export", "pipeline", "cli"]
# Allowed imports beyond "any earlier stage", and earlier stages a stage must NOT import.
FORBIDDEN = {"models": {"data"}, "distill": {"data"}, "evaluate": {"train"},
             "export": {"train", "distill", "evaluate", "data"}}


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


def test_decode_and_nms_live_in_models_only() -> None:
    """Decode + NMS are model post-processing: one place (models/), never redefined under evaluate/."""
    assert (PKG / "models" / "decode.py").is_file() and (PKG / "models" / "nms.py").is_file()
    names = {"decode", "rotated_nms", "circle_nms"}
    dupes = [f"{p.relative_to(PKG)}: {n.name}" for p in sorted((PKG / "evaluate").rglob("*.py"))
             for n in ast.walk(ast.parse(p.read_text()))
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in names]
    assert not dupes, f"import these from itkd_cli.models.decode / models.nms instead: {dupes}"


# pipeline/ wires stages together; the losses live in models (detection) and distill (KD), the weight
# surgery that derives a student in models/student.py. These names in pipeline/ would mean it crept back.
PIPELINE_FORBIDDEN_IMPORTS = ("torch.nn.functional", "itkd_cli.models.loss", "itkd_cli.distill.losses")
PIPELINE_FORBIDDEN_CALLS = ("load_state_dict", "state_dict", "index_select", "centerpoint_loss", "combine")


def test_pipeline_holds_no_loss_or_weight_surgery() -> None:
    problems = []
    for path in sorted((PKG / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PKG)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module in PIPELINE_FORBIDDEN_IMPORTS:
                problems.append(f"{where} imports {node.module}")
            if isinstance(node, ast.Import):
                problems += [f"{where} imports {a.name}" for a in node.names if a.name in PIPELINE_FORBIDDEN_IMPORTS]
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in PIPELINE_FORBIDDEN_CALLS:
                    problems.append(f"{where} calls {name}")
            if isinstance(node, ast.FunctionDef) and ("loss" in node.name or "select" in node.name):
                problems.append(f"{where} defines {node.name}")
    assert not problems, problems


def test_channel_selection_lives_in_models_student_only() -> None:
    """One place for the student's weight surgery: nothing outside models/student.py defines it."""
    defined = [f"{p.relative_to(PKG)}" for p in PKG.rglob("*.py") if p.name != "student.py"
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.FunctionDef) and node.name in ("channel_select", "concat_input_index",
                                                                      "bev_channel_index", "derive_student")]
    assert not defined, defined
