"""AdamW with a one-cycle schedule (OpenPCDet's adam_onecycle) over trainable modules only."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from itkd_cli.recipe.schema import TrainConfig

# Adam's beta2 in OpenPCDet's adam_onecycle; beta1 is driven by the one-cycle momentum.
BETA2 = 0.99


def trainable_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    """Parameters with requires_grad of the given modules, each once (shared ones deduplicated).

    A frozen teacher passed here contributes nothing, so it is never updated or weight-decayed.
    """
    seen: set[int] = set()
    params = []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def build_optimizer(modules: Sequence[nn.Module], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one parameter group per module.

    Args:
        modules: the modules to train (student, distiller...); frozen ones are skipped.
        cfg: lr, weight_decay and momentum (beta1 starts at momentum[0]).

    Raises:
        ValueError: no trainable parameter at all.
    """
    groups, seen = [], set()
    for module in modules:
        params = [p for p in trainable_parameters([module]) if id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params})
    if not groups:
        raise ValueError("no trainable parameter in the modules given to the optimiser")
    return torch.optim.AdamW(groups, lr=cfg.lr / cfg.div_factor, betas=(cfg.momentum[0], BETA2),
                             weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """One-cycle lr (lr/div_factor -> lr -> ~0, cosine) with beta1 cycling momentum[0] -> [1] -> [0].

    Args:
        optimizer: the AdamW from build_optimizer.
        cfg: lr, div_factor, pct_start, momentum.
        total_steps: optimiser steps of the whole run (epochs x steps per epoch).
    """
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 2), pct_start=cfg.pct_start,
        div_factor=cfg.div_factor, cycle_momentum=True,
        max_momentum=cfg.momentum[0], base_momentum=cfg.momentum[1], anneal_strategy="cos")


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping (inf/NaN when broken)."""
    return torch.nn.utils.clip_grad_norm_(list(params), max_norm)
