"""Fold eval-mode BatchNorm into the conv / linear right before it, for inference-only copies.

A frozen teacher runs in eval mode on every distillation step; its BatchNorm layers are then a fixed
per-channel affine map that torch's own ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` merge into the
preceding layer, which saves one pass over every feature map. Folded: ``Conv2d``/``ConvTranspose2d``
followed by ``BatchNorm2d`` inside an ``nn.Sequential`` (neck blocks, head convs), and the pairs a
module lists in ``BN_FOLD_PAIRS`` (the pillar encoder's Linear + BatchNorm1d). spconv layers are left
as they are (their BN follows a sparse conv whose weight layout depends on the spconv version).
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode deep copy of ``model`` with BatchNorm folded away; ``model`` is left untouched.

    Args:
        model: Any network; only its copy is changed.

    Returns:
        (the folded copy in eval mode with requires_grad False, number of BatchNorm layers folded).
        The copy computes what ``model.eval()`` computes, up to float rounding.
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    count = 0
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            count += _fold_sequential(module)
        for lin_name, bn_name in getattr(module, "BN_FOLD_PAIRS", ()):
            linear, bn = getattr(module, lin_name), getattr(module, bn_name)
            if isinstance(linear, nn.Linear) and isinstance(bn, nn.BatchNorm1d) and bn.track_running_stats:
                setattr(module, lin_name, fuse_linear_bn_eval(linear, bn))
                setattr(module, bn_name, nn.Identity())
                count += 1
    return folded, count


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold every (conv, BatchNorm2d) neighbour pair of ``seq`` in place; returns how many."""
    count = 0
    for i in range(len(seq) - 1):
        conv, bn = seq[i], seq[i + 1]
        if isinstance(conv, _CONVS) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            seq[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
            seq[i + 1] = nn.Identity()
            count += 1
    return count
