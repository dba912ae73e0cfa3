"""Class-balanced grouping and sampling (CBGS, arXiv 1908.09492) of a training split's frames.

Same computation as OpenPCDet's ``NuScenesDataset.balanced_infos_resampling`` (the ``cbgs_*`` configs):
per class, the frames whose ``gt_names`` contain it (a frame counts once per class, only names in
``class_names``, no point-count filter); ``cls_dist[c] = len(frames[c]) / sum_c len(frames[c])``;
``ratio[c] = (1 / len(class_names)) / cls_dist[c]``; then ``int(len(frames[c]) * ratio[c])`` frames drawn
uniformly with replacement from each class's frames, concatenated in class order. Differences: the draws
come from a generator seeded by ``train.seed`` (upstream uses numpy's global state) so a run and its
resume see the same list, and a class with no frame contributes none (upstream divides by zero).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from itkd_cli.core.errors import ItkdError

# Second word of the generator's seed: keeps these draws apart from the (seed, epoch) shuffle stream.
STREAM = 0xCB65


def class_frames(infos: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, list[int]]:
    """Indices of the frames whose ``gt_names`` hold each class (once per frame), in frame order."""
    frames: dict[str, list[int]] = {name: [] for name in class_names}
    for i, info in enumerate(infos):
        for name in set(info["gt_names"]):
            if name in frames:
                frames[name].append(i)
    return frames


def balanced_indices(infos: Sequence[Mapping[str, Any]], class_names: Sequence[str], seed: int,
                     split: str = "train") -> list[int]:
    """Frame indices of the class-balanced resampled split (frames repeat; order is by class).

    Args:
        infos: frame infos, each with ``gt_names`` (list of str).
        class_names: detection classes; other names are ignored.
        seed: ``train.seed``; the same seed gives the same list.
        split: split name, for the error message.

    Returns:
        Indices into ``infos``, ``sum_c int(len(frames[c]) * ratio[c])`` of them.

    Raises:
        ItkdError: no frame holds any of ``class_names``, or too few for any class to get a frame.
    """
    frames = class_frames(infos, class_names)
    duplicated = sum(len(v) for v in frames.values())
    if duplicated == 0:
        raise ItkdError(f"dataset.balanced_resampling: no frame of split {split!r} has a box of dataset.class_names",
                        hint="check dataset.class_names, or set dataset.balanced_resampling=false")
    frac = 1.0 / len(class_names)
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, STREAM]))
    out: list[int] = []
    for pool in frames.values():
        if not pool:  # upstream's frac / 0; int(0 * ratio) frames either way
            continue
        ratio = frac / (len(pool) / duplicated)  # same float operations as upstream, so the same int()
        out += rng.choice(np.asarray(pool), int(len(pool) * ratio)).tolist()
    if not out:
        raise ItkdError(f"dataset.balanced_resampling: split {split!r} has {duplicated} (frame, class) pairs for "
                        f"{len(class_names)} classes, too few to draw any frame",
                        hint="set dataset.balanced_resampling=false for so small a split")
    return out


def class_counts(infos: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                 indices: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """Frames and per-class frame and box counts of ``infos`` (or of ``infos[i] for i in indices``).

    Returns:
        {"frames": int, "classes": {name: {"frames": frames holding it, "boxes": its boxes}}}; repeated
        frames count each time.
    """
    chosen = infos if indices is None else [infos[i] for i in indices]
    classes = {name: {"frames": 0, "boxes": 0} for name in class_names}
    for info in chosen:
        names = list(info["gt_names"])
        for name in set(names):
            if name in classes:
                classes[name]["frames"] += 1
                classes[name]["boxes"] += names.count(name)
    return {"frames": len(chosen), "classes": classes}


def resampling_report(infos: Sequence[Mapping[str, Any]], class_names: Sequence[str], seed: int,
                      split: str = "train") -> dict[str, Any]:
    """Counts before and after class-balanced resampling (see ``class_counts``).

    Returns:
        {"seed", "before", "after"}.

    Raises:
        ItkdError: as ``balanced_indices``.
    """
    indices = balanced_indices(infos, class_names, seed, split)
    return {"seed": seed, "before": class_counts(infos, class_names),
            "after": class_counts(infos, class_names, indices)}
