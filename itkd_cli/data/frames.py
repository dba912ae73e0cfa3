"""A few real frames of a split through our pipeline (e.g. the verification frames of an ONNX export)."""

from __future__ import annotations

import numpy as np

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Batch
from itkd_cli.recipe.schema import Recipe


def sample_frames(recipe: Recipe, split: str, count: int = 2) -> list[tuple[str, Batch]]:
    """``count`` real frames of ``split`` through our pipeline (eval mode: no augmentation), as
    (label, one-frame Batch) pairs.

    Frames are spread over the split so their pillar counts differ. A split with fewer frames is padded
    with the training-augmented view of its first frame (still real data; labelled as such).

    Raises:
        ItkdError: dataset missing / split unknown or empty.
    """
    from itkd_cli.data.loader import collate
    from itkd_cli.data.dataset import FrameDataset

    ds = FrameDataset(recipe, split, train=False)
    if len(ds) == 0:
        raise ItkdError(f"split {split!r}: no frames in {recipe.dataset.root}", hint="pass --split")
    picks = sorted({int(i) for i in np.linspace(0, len(ds) - 1, count).round()})
    frames = [(f"{split}[{i}] {ds.tokens[i]}", collate([ds[i]], recipe)) for i in picks]
    if len(frames) < count:
        # the same frame 0, augmented: class-balanced resampling would put another frame at index 0
        plain = recipe.model_copy(update={"dataset": recipe.dataset.model_copy(update={"balanced_resampling": False})})
        aug = FrameDataset(plain, split, train=True)
        frames.append((f"{split}[0] {ds.tokens[0]} (training augmentation, seed {recipe.train.seed})",
                       collate([aug[(0, 0)]], recipe)))
    return frames
