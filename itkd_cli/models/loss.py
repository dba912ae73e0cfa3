"""CenterPoint detection loss as pure functions (OpenPCDet's CenterHead.get_loss, without state).

L_det = sum over task heads of cls_weight * focal(hm) + loc_weight * sum_k code_weights[k] * L1_k.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.recipe.schema import HeadConfig

# The sigmoid is clamped so that log() stays finite at saturated logits (CenterNet's _sigmoid).
_EPS = 1e-4


class DetLoss(NamedTuple):
    """Detection loss, summed over task heads, each term already weighted.

    total: cls_weight * hm + loc_weight * loc (scalar).
    hm: focal heatmap loss summed over tasks (unweighted, scalar).
    loc: code-weighted L1 box loss summed over tasks (without loc_weight, scalar).
    """

    total: Tensor
    hm: Tensor
    loc: Tensor


def clamped_sigmoid(logits: Tensor) -> Tensor:
    """Sigmoid clamped to [1e-4, 1 - 1e-4] (CenterNet)."""
    return torch.clamp(logits.sigmoid(), min=_EPS, max=1 - _EPS)


def focal_heatmap_loss(pred_logits: Tensor, gt_heatmap: Tensor, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet focal loss on gaussian heatmaps (OpenPCDet FocalLossCenterNet).

    Args:
        pred_logits: heatmap logits (B, C, H, W).
        gt_heatmap: target heatmap (B, C, H, W) in [0, 1]; exactly 1 at object centres.
        alpha: focusing exponent on the prediction error.
        beta: exponent reducing the penalty of negatives near a centre.

    Returns:
        Scalar loss: -(sum pos + sum neg) / max(num positives, 1).
    """
    pred = clamped_sigmoid(pred_logits.float())
    gt = gt_heatmap.float()
    pos = gt.eq(1).float()
    neg = gt.lt(1).float()
    pos_loss = torch.log(pred) * torch.pow(1 - pred, alpha) * pos
    neg_loss = torch.log(1 - pred) * torch.pow(pred, alpha) * torch.pow(1 - gt, beta) * neg
    num_pos = pos.sum().clamp(min=1.0)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def gather_feat(pred: Tensor, ind: Tensor) -> Tensor:
    """Pick the map values at flat indices.

    Args:
        pred: maps (B, K, H, W).
        ind: flat indices y * W + x (B, M), int64.

    Returns:
        (B, M, K) values at those cells.
    """
    b, k = pred.shape[:2]
    flat = pred.reshape(b, k, -1).permute(0, 2, 1)  # (B, H*W, K)
    return flat.gather(1, ind.long().unsqueeze(-1).expand(-1, -1, k))


def reg_l1_loss(pred: Tensor, ind: Tensor, mask: Tensor, target: Tensor, code_weights: Sequence[float]) -> Tensor:
    """Code-weighted L1 box regression at object centres (OpenPCDet RegLossCenterNet).

    Args:
        pred: regression maps (B, K, H, W), K = code size.
        ind: flat centre cell of each object slot (B, M).
        mask: which slots hold an object (B, M), bool.
        target: box code targets (B, M, K); NaN entries are ignored.
        code_weights: K weights of the code entries.

    Returns:
        Scalar: sum_k w_k * sum_{b,m valid} |pred - target|_k / max(num objects, 1).
    """
    picked = gather_feat(pred.float(), ind)  # (B, M, K)
    target = target.float()
    num = mask.float().sum().clamp(min=1.0)
    valid = mask.unsqueeze(-1).expand_as(target).float() * (~torch.isnan(target)).float()
    diff = torch.abs(picked * valid - torch.nan_to_num(target) * valid)
    per_code = diff.sum(dim=(0, 1)) / num  # (K,)
    weights = torch.as_tensor(list(code_weights), dtype=per_code.dtype, device=per_code.device)
    if weights.numel() != per_code.numel():
        raise ValueError(f"code_weights has {weights.numel()} entries, the box code {per_code.numel()}")
    return (per_code * weights).sum()


def box_code_map(task: TaskHeadOutput) -> Tensor:
    """Concatenate the regression heads in the target code order.

    Returns:
        (B, code, H, W): center(2), center_z(1), dim(3), rot(2)[, vel(2)].
    """
    parts = [task.center, task.center_z, task.dim, task.rot]
    if task.vel is not None:
        parts.append(task.vel)
    return torch.cat(parts, dim=1)


def centerpoint_loss(output: DetectorOutput, targets: Sequence[TaskTargets], head_cfg: HeadConfig) -> DetLoss:
    """CenterPoint loss summed over task heads.

    Args:
        output: detector output; output.tasks[i] predicts for targets[i].
        targets: one TaskTargets per task head.
        head_cfg: head settings (code_weights, cls_weight, loc_weight).

    Returns:
        DetLoss(total, hm, loc), scalars.
    """
    if len(output.tasks) != len(targets):
        raise ValueError(f"{len(output.tasks)} task heads but {len(targets)} target sets")
    hm_sum = output.bev.new_zeros((), dtype=torch.float32)
    loc_sum = hm_sum.clone()
    for task, tgt in zip(output.tasks, targets):
        hm_sum = hm_sum + focal_heatmap_loss(task.hm, tgt.heatmap)
        loc_sum = loc_sum + reg_l1_loss(box_code_map(task), tgt.ind, tgt.mask, tgt.box, head_cfg.code_weights)
    total = head_cfg.cls_weight * hm_sum + head_cfg.loc_weight * loc_sum
    return DetLoss(total=total, hm=hm_sum, loc=loc_sum)
