"""Resolve the recipe of a compress run, load the frozen teacher, derive and build the student."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple, Optional

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.build import build_model
from itkd_cli.models.checkpoint import LoadReport, load_teacher, read_checkpoint, read_ours
from itkd_cli.models.student import concat_input_index, derive_student
from itkd_cli.recipe.load import apply_overrides, load_raw, resolve_path, validate
from itkd_cli.recipe.schema import ModelConfig, Recipe


class Pair(NamedTuple):
    """A compress run's networks: the recipe (model = teacher), the student config and both modules."""

    recipe: Recipe
    student_cfg: ModelConfig
    teacher: nn.Module
    student: nn.Module
    load_report: LoadReport


def resolve_recipe(teacher_path: Path, recipe: Optional[str], overrides: Iterable[str]) -> Recipe:
    """The recipe of the run: --recipe if given, else the one stored in our teacher checkpoint.

    Raises:
        ItkdError: a foreign teacher without --recipe, or a recipe whose model differs from the
            architecture stored in our teacher checkpoint.
    """
    raw = read_checkpoint(teacher_path)  # fails first on a missing/unsafe/unreadable teacher
    overrides = list(overrides)  # read twice: applied, then named in errors
    stored = read_ours(teacher_path)[1] if raw.format == "itkd" else None
    if recipe is None:
        if stored is None:
            raise ItkdError(f"{teacher_path}: a {raw.format} checkpoint does not say its architecture",
                            hint="pass --recipe NAME|PATH describing the teacher (see `itkd recipe ls`)")
        data = stored.model_dump(mode="json")
        data["train"]["max_steps"] = None  # a smoke-run cap of the teacher's training is not the student's
        return validate(apply_overrides(data, overrides), f"{teacher_path}: recipe", overrides)
    path = resolve_path(recipe)
    chosen = validate(apply_overrides(load_raw(path), overrides), str(path), overrides)
    if stored is not None and stored.model != chosen.model:
        raise ItkdError(f"{path}: model section does not match the architecture stored in {teacher_path}",
                        hint="drop --recipe to use the teacher's own recipe, or pick the matching one")
    return chosen


def channel_select(student: nn.Module, teacher: nn.Module,
                   concat_index: Optional[dict[str, tuple[int, list[int]]]] = None) -> int:
    """Initialise the student from the teacher by keeping the leading channels of every tensor.

    Args:
        student: Narrower network (same layer names).
        teacher: Trained teacher.
        concat_index: {key: (dim, teacher indices)} for tensors that read a concat of narrowed
            blocks (``models.student.concat_input_index``): along ``dim`` they keep those channels.

    Returns:
        Number of student tensors initialised (shapes must be no larger than the teacher's).
    """
    t_state, concat_index = teacher.state_dict(), concat_index or {}
    new_state, copied = {}, 0
    for key, s_val in student.state_dict().items():
        t_val = t_state.get(key)
        if t_val is None or t_val.dim() != s_val.dim() or any(s > t for s, t in zip(s_val.shape, t_val.shape)):
            new_state[key] = s_val
            continue
        if key in concat_index:
            dim, keep = concat_index[key]
            t_val = t_val.index_select(dim, torch.tensor(keep, dtype=torch.long))
        new_state[key] = t_val[tuple(slice(0, s) for s in s_val.shape)].clone()
        copied += 1
    student.load_state_dict(new_state)
    return copied


def build_pair(recipe: Recipe, teacher_path: Path, device: torch.device) -> Pair:
    """Load the teacher (strictly: never a random teacher) and build the derived student."""
    teacher = build_model(recipe.model)
    state, report = load_teacher(teacher_path, teacher, strict=True)
    teacher.load_state_dict(state)
    student_cfg = derive_student(recipe.model, recipe.student.ratio, recipe.student.policy)
    student = build_model(student_cfg)
    if recipe.student.init_from_teacher:
        channel_select(student, teacher, concat_input_index(recipe.model, student_cfg))
    return Pair(recipe, student_cfg, teacher.to(device), student.to(device), report)


def student_recipe(recipe: Recipe, student_cfg: ModelConfig) -> Recipe:
    """The recipe stored with the student: same data/schedule, model = the student's config."""
    return recipe.model_copy(update={"model": student_cfg})
