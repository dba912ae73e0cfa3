"""Checks of the training data made before any training step, from the cached info index only (no point file
is read): a run whose classes the dataset never has would train on zero boxes and exit 0 (issue #45)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.cache import load_infos
from itkd_cli.recipe.schema import DatasetConfig, Recipe


def split_class_counts(cfg: DatasetConfig, split: str) -> dict[str, int]:
    """Boxes per class name (after the devkit's category -> detection-name mapping) in a split.

    Only boxes with at least one LiDAR point count: training drops the others (``FrameDataset.annotations``).
    """
    counts: dict[str, int] = {}
    for info in load_infos(cfg, split):
        for name, pts in zip(info["gt_names"], info["num_lidar_pts"]):
            if pts > 0:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _listed(counts: dict[str, int]) -> str:
    # No square brackets: the CLI prints messages through rich, which would read [a, b] as markup.
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none with LiDAR points"


def check_classes(cfg: DatasetConfig, classes: Sequence[str], owner: str, teacher: bool = False,
                  split: Optional[str] = None) -> list[str]:
    """Compare the classes a run trains (``owner``'s) with those the training split's annotations hold.

    Args:
        cfg: dataset settings (root, version, split, cache).
        classes: class names trained, in label order.
        owner: who the classes belong to, for the messages ("dataset.class_names", "teacher PATH").
        teacher: the classes are a teacher's (compress), for the hint.
        split: default ``cfg.train_split``.

    Returns:
        Warnings (one line each) when some of ``classes`` have no box in the split; training can go on.

    Raises:
        ItkdError: none of ``classes`` has a box in the split (the run would learn nothing), naming both lists.
    """
    split = split or cfg.train_split
    counts = split_class_counts(cfg, split)
    where = f"split {split!r} of {Path(cfg.root) / cfg.version}"
    present = {c: counts[c] for c in classes if c in counts}
    if not present:
        raise ItkdError(
            f"{owner}: none of its classes ({', '.join(classes)}) occurs in {where}, whose boxes are: "
            f"{_listed(counts)}",
            hint=("distil on the data the teacher was trained on (--set dataset.root=DIR --set dataset.version=V), "
                  "or train a teacher on this dataset's classes (`itkd train --recipe R`)" if teacher else
                  "point dataset.root / dataset.version at data with these classes (--set), or set "
                  "dataset.class_names and model.head.tasks to this dataset's classes (`itkd recipe cp` to edit)"))
    absent = [c for c in classes if c not in counts]
    if not absent:
        return []
    return [f"{owner}: no box in {where} for {len(absent)} of {len(classes)} classes "
            f"({', '.join(absent)}); training goes on with {_listed(present)}"]


def check_training_classes(recipe: Recipe, teacher: Optional[Path] = None) -> list[str]:
    """``check_classes`` for `itkd train` (the recipe's classes) or `itkd compress` (the teacher's).

    A compress run's recipe describes its teacher (``models.teacher.teacher_recipe``), so the classes its
    head tasks predict are the teacher checkpoint's.
    """
    if teacher is None:
        return check_classes(recipe.dataset, recipe.dataset.class_names, "dataset.class_names")
    predicted = [c for task in recipe.model.head.tasks for c in task]
    return check_classes(recipe.dataset, predicted, f"teacher {teacher}", teacher=True)
