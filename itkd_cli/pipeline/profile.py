"""Params, MACs and CPU latency of a network on a REAL frame of the recipe's val split."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from itkd_cli.data.loader import build_loader
from itkd_cli.models.complexity import Frame, profile
from itkd_cli.recipe.schema import Recipe


def first_val_frame(recipe: Recipe) -> Frame:
    """The first frame of the val split, voxelised by our data pipeline (batch size 1)."""
    loader = build_loader(recipe.model_copy(update={"dataset": recipe.dataset.model_copy(update={"workers": 0})}),
                          recipe.dataset.val_split, train=False, batch_size=1, shuffle=False, seed=0)
    batch = next(iter(loader))
    return Frame(batch.voxels, batch.num_points, batch.coords, int(batch.num_points.sum()))


def profile_on_frame(model: nn.Module, frame: Frame, repeats: int = 5) -> dict[str, Any]:
    """Headline numbers for reports: params, GMACs, median CPU latency (ms), and the per-stage detail."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        # 3 warm-up forwards: the first calls of a process pay one-off costs (allocator, kernels) that would
        # fall on whichever network is profiled first and bias the teacher/student speed-up (--min-speedup)
        stats = profile(cpu_model, frame, repeats=repeats, warmup=3)
    return {"params": stats["params_total"], "gmacs": stats["macs_total"] / 1e9, "latency_ms": stats["latency_ms"],
            "params_per_stage": stats["params"], "macs_per_stage": stats["macs"], "profile_frame": stats["frame"]}
