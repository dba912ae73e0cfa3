"""`itkd info --checkpoint`: the profiled network is named by the checkpoint's stored role (#45 item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itkd_cli.models import build_model, derive_student
from itkd_cli.models.checkpoint import save_checkpoint
from itkd_cli.recipe import load_recipe

# +-5.12 m: a small BEV grid, so building and profiling take well under a second
SMALL = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]
FAST = ["--points", "2000", "--repeats", "0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """A real teacher and a real 1/4 student checkpoint of the small synth-pillar, with their param counts."""
    root = tmp_path_factory.mktemp("info")
    rec = load_recipe("synth-pillar", SMALL)
    teacher = build_model(rec.model)
    student_rec = rec.model_copy(update={"model": derive_student(rec.model, 0.25, "neck")})
    student = build_model(student_rec.model)
    save_checkpoint(root / "teacher.pth", teacher, rec, "teacher")
    save_checkpoint(root / "student.pth", student, student_rec, "student")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"teacher": (root / "teacher.pth", count(teacher)), "student": (root / "student.pth", count(student))}


def _json(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout[res.stdout.index("{"):])


def test_student_checkpoint_is_named_student(checkpoints, cli) -> None:
    path, params = checkpoints["student"]
    data = _json(cli("info", "--checkpoint", path, *FAST, "--json"))
    assert data["role"] == "student" and data["checkpoint"] == str(path)
    assert data["model"]["params_total"] == params
    assert data["teacher"] is None  # never a student under the teacher's name
    assert data["student"] is None  # no --ratio: no derived student either


def test_teacher_checkpoint_keeps_the_teacher_key(checkpoints, cli) -> None:
    path, params = checkpoints["teacher"]
    data = _json(cli("info", "--checkpoint", path, *FAST, "--json"))
    assert data["role"] == "teacher" and data["model"]["params_total"] == params
    assert data["teacher"] == data["model"]  # what scripts written before `role` read


def test_recipe_alone_is_the_teacher_and_ratio_adds_the_student(cli) -> None:
    sets = [a for s in SMALL for a in ("--set", s)]
    data = _json(cli("info", "--recipe", "synth-pillar", *sets, "--ratio", "0.25", *FAST, "--json"))
    assert data["role"] == "teacher" and data["checkpoint"] is None
    assert data["student"]["params_total"] < data["model"]["params_total"] == data["teacher"]["params_total"]


def test_table_names_the_role(checkpoints, cli) -> None:
    path, _ = checkpoints["student"]
    res = cli("info", "--checkpoint", path, *FAST, "--ratio", "0.5")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "(student)" in text and "profiling student on" in text
    assert "0.5x" in text  # the derived student's columns are not the checkpoint's own
    assert "teacher" not in text


def test_foreign_checkpoint_with_recipe_is_a_teacher(checkpoints, cli, tmp_path: Path) -> None:
    import torch

    path, params = checkpoints["teacher"]
    bare = tmp_path / "pcdet.pth"
    torch.save({"model_state": torch.load(path, weights_only=True)["model_state"]}, bare)
    sets = [a for s in SMALL for a in ("--set", s)]
    data = _json(cli("info", "--recipe", "synth-pillar", *sets, "--checkpoint", bare, *FAST, "--json"))
    assert data["role"] == "teacher" and data["model"]["params_total"] == params
