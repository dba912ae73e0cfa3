"""A teacher checkpoint as a compress run needs it: the recipe that describes it and its network, loaded
strictly (never a random teacher: defect 5 of the public code)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.build import build_model
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.models.checkpoint import LoadReport, load_teacher, read_checkpoint, read_ours
from itkd_cli.recipe.load import apply_overrides, load_raw, resolve_path, validate
from itkd_cli.recipe.schema import Recipe


def teacher_recipe(teacher_path: Path, recipe: Optional[str], overrides: Iterable[str]) -> Recipe:
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
        data.pop("gates", None)  # nor are the gates of the job that made it (a student compressed again)
        return validate(apply_overrides(data, overrides), f"{teacher_path}: recipe", overrides)
    path = resolve_path(recipe)
    chosen = validate(apply_overrides(load_raw(path), overrides), str(path), overrides)
    if stored is not None and stored.model != chosen.model:
        raise ItkdError(f"{path}: model section does not match the architecture stored in {teacher_path}",
                        hint="drop --recipe to use the teacher's own recipe, or pick the matching one")
    return chosen


def load_teacher_model(recipe: Recipe, teacher_path: Path) -> tuple[CenterPoint, LoadReport]:
    """The teacher network of ``recipe.model`` with the checkpoint's weights, every key matched."""
    teacher = build_model(recipe.model)
    state, report = load_teacher(teacher_path, teacher, strict=True)
    teacher.load_state_dict(state)
    return teacher, report
