"""Inference over a split: the model's decoded boxes per frame, for whichever official metrics score them."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from itkd_cli.core.types import Batch, Detections
from itkd_cli.models.decode import decode
from itkd_cli.recipe.schema import ModelConfig, Recipe


def _to_device(batch: Batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (batch.voxels.to(device, non_blocking=True), batch.num_points.to(device, non_blocking=True),
            batch.coords.to(device, non_blocking=True))


@torch.no_grad()
def predict_split(model: nn.Module, recipe: Recipe, split: str, model_cfg: Optional[ModelConfig] = None,
                  max_frames: Optional[int] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> tuple[dict[str, Detections], Any]:
    """Run the model over a split (no augmentation) and decode boxes per frame.

    Args:
        model: CenterPoint; its device is used; its train/eval mode is restored afterwards.
        recipe: dataset and eval settings.
        split: split name.
        model_cfg: the network's config (a student's); default recipe.model. Decoding uses its grid/post.
        max_frames: stop after this many frames (first frames of the split, in dataset order).
        progress: called with (frames done, frames total).

    Returns:
        (sample token -> Detections on CPU, the FrameDataset (for poses)).
    """
    from itkd_cli.data.loader import build_loader

    model_cfg = model_cfg or recipe.model
    loader = build_loader(recipe, split, train=False, batch_size=recipe.eval.batch_size, shuffle=False,
                          seed=recipe.train.seed)
    total = len(loader.dataset) if max_frames is None else min(max_frames, len(loader.dataset))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, Detections] = {}
    try:
        for batch in loader:
            pred = model(*_to_device(batch, device), batch.batch_size)
            for token, det in zip(batch.tokens, decode(pred, model_cfg, recipe.dataset.class_names)):
                if len(out) < total:
                    out[token] = Detections(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu())
            if progress is not None:
                progress(len(out), total)
            if len(out) >= total:
                break
    finally:
        model.train(was_training)
    return out, loader.dataset
