"""Head relation-aware self-attention loss (itKD sec. 4).

Per task head the outputs (hm, center, center_z, dim, rot[, vel]) are concatenated into X
(B, N, C) at the ground-truth centres. A parameter-free attention over channels relates them:
inter-head over all C channels, intra-head inside each head's own channel block. A learned fusion
(one per task head, shared by teacher and student) maps concat(inter, intra) (2C) back to C, and
the loss is the L1 distance of the fused student and teacher rows per valid object.

Heatmap form (defect 4 of the public code): BOTH sides use sigmoid probabilities, computed out of
place, so the channels share the [0, 1] scale of the other branches and the detection loss keeps
its logits untouched.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import REG_HEADS, VEL_HEAD, TaskHeadOutput

GUARDS = ("normalize", "frozen", "none")


def head_splits(n_classes: int, with_velocity: bool) -> tuple[int, ...]:
    """Channel blocks of one task head: (n_cls, 2, 1, 3, 2[, 2]) from core.types' head layout."""
    sizes = [n_classes] + [c for _, c in REG_HEADS]
    return tuple(sizes + [VEL_HEAD[1]] if with_velocity else sizes)


def head_features(task: TaskHeadOutput, with_velocity: bool) -> Tensor:
    """Concatenate one task head's outputs, heatmap as sigmoid probabilities (never in place).

    Args:
        task: Head outputs, maps (B, *, H, W).
        with_velocity: Whether the head has a velocity branch.

    Returns:
        (B, C, H, W) with C = sum(head_splits(n_cls, with_velocity)).
    """
    if with_velocity != (task.vel is not None):
        raise ItkdError(f"model.head.with_velocity: {with_velocity} but the head output "
                        f"{'has no' if task.vel is None else 'has a'} velocity branch")
    parts = [torch.sigmoid(task.hm), task.center, task.center_z, task.dim, task.rot]
    if task.vel is not None:
        parts.append(task.vel)
    return torch.cat(parts, dim=1)


def relation_attention(x: Tensor, n_valid: Tensor) -> Tensor:
    """Parameter-free channel self-attention with Q = K = V = X.

    scores = X^T X / sqrt(N) (C x C); each output channel j is a convex combination of the input
    channels weighted by softmax_i(scores[i, j]) (softmax over the input-channel axis, as the
    public code), i.e. out = X . softmax(scores). Padded rows are zero and add nothing to X^T X; N is
    the valid objects of the frame (default form) or the max_objects slots (paper form).

    Args:
        x: (B, M, C) features at object centres, padded rows zero.
        n_valid: (B,) the N of each frame.

    Returns:
        (B, N, C); padded rows stay zero.
    """
    return torch.matmul(x, relation_weights(x, n_valid))


def relation_weights(x: Tensor, n_valid: Tensor) -> Tensor:
    """softmax over input channels of X^T X / sqrt(N): (B, C_in, C_out), columns sum to 1."""
    scale = n_valid.clamp(min=1).to(x.dtype).sqrt().view(-1, 1, 1)
    return F.softmax(torch.matmul(x.transpose(1, 2), x) / scale, dim=1)


def inter_intra(x: Tensor, splits: Sequence[int], n_valid: Tensor) -> Tensor:
    """concat(inter-head attention over all C, intra-head attention per channel block).

    Args:
        x: (B, N, C) with C = sum(splits).
        splits: Channel block size of each head branch.
        n_valid: (B,) valid objects per frame.

    Returns:
        (B, N, 2C).
    """
    if x.shape[-1] != sum(splits):
        raise ItkdError(f"model.head: head outputs have {x.shape[-1]} channels, config implies {sum(splits)}")
    inter = relation_attention(x, n_valid)
    intra = torch.cat([relation_attention(blk, n_valid) for blk in torch.split(x, list(splits), dim=-1)], dim=-1)
    return torch.cat([inter, intra], dim=-1)


class HeadFusion(nn.Module):
    """Learned 1x1 Conv1d 2C -> C fusing inter and intra attention; shared by teacher and student.

    Guard against the fusion collapsing to cheat the loss (both sides go through the same conv,
    so any map that kills its input, or cancels inter against intra, zeroes the loss):
      - ``normalize``: no bias; the weight is normalised to W = [diag(a) | diag(1 - a)] with
        a = sigmoid(theta) per channel, i.e. each output channel is a learned CONVEX combination of
        its inter and intra relation. Its scale cannot shrink (weights sum to 1), it cannot
        subtract intra from inter, and it keeps one output per channel (no rank collapse).
        Starts at a = 1/2.
      - ``frozen``: fixed [I | I] / 2 (mean of inter and intra), a buffer, never trained.
      - ``none``: plain learned Conv1d with bias (the public code; it collapses, see the tests).
    itKD always uses ``normalize`` (both forms: the collapse is a defect, not the method); the other two
    guards exist for the tests that show why.

    Args:
        channels: C of the task head.
        guard: One of ``GUARDS``.
    """

    def __init__(self, channels: int, guard: str) -> None:
        super().__init__()
        if guard not in GUARDS:
            raise ValueError(f"HeadFusion: unknown guard {guard!r} (one of {GUARDS})")
        self.guard = guard
        eye = torch.eye(channels)
        if guard == "none":
            self.conv = nn.Conv1d(2 * channels, channels, kernel_size=1)
        elif guard == "frozen":
            self.register_buffer("fixed_weight", torch.cat([eye, eye], dim=1) / 2.0)
        else:
            self.mix_logit = nn.Parameter(torch.zeros(channels))

    def weight(self) -> Tensor:
        """Effective fusion matrix (C, 2C)."""
        if self.guard == "none":
            return self.conv.weight.squeeze(-1)
        if self.guard == "frozen":
            return self.fixed_weight
        a = torch.sigmoid(self.mix_logit)
        return torch.cat([torch.diag(a), torch.diag(1.0 - a)], dim=1)

    def forward(self, u: Tensor) -> Tensor:
        """Fuse (B, N, 2C) -> (B, N, C)."""
        if self.guard == "none":  # the Conv1d's 1x1 kernel applied as a matrix (same math, less overhead)
            return F.linear(u, self.weight(), self.conv.bias)
        return torch.matmul(u, self.weight().transpose(0, 1))


def teacher_channel_scale(x_t: Tensor, mask: Tensor, floor: float = 1e-2) -> Tensor:
    """(C,) root mean square of each teacher channel over the valid objects of the whole batch, at
    least ``floor``; ones when fewer than two objects. RMS, not std: X^T X is uncentred, so a channel
    with a large mean and a small spread (a log box size) would still dominate after dividing by std.
    Padded rows of ``x_t`` are zero (``gather_at_centres``), so plain sums count valid objects only and
    nothing waits on the device."""
    n = mask.sum()
    rms = (x_t.pow(2).sum(dim=(0, 1)) / n.clamp(min=1)).sqrt().clamp(min=floor)
    return torch.where(n >= 2, rms, torch.ones_like(rms))


def head_attention_sum(x_s: Tensor, x_t: Tensor, mask: Tensor, fusion: HeadFusion, splits: Sequence[int],
                       standardize: bool, slots: Optional[int] = None) -> Tensor:
    """Summed L1 between fused student and teacher rows of ONE task head, valid objects only.

    Args:
        x_s: (B, M, C) student head features at the centres (``head_features`` + ``gather_at_centres``).
        x_t: (B, M, C) teacher head features (detached here).
        mask: (B, M) bool.
        fusion: This task's shared fusion module.
        splits: Channel blocks (see ``head_splits``).
        standardize: Divide both sides' channels by ``teacher_channel_scale`` before the attention (the
            default form; without it the largest channels, box size and velocity, dominate X^T X and the
            sharp softmax turns most output channels into copies of them).
        slots: N of the attention's sqrt(N): None for the valid objects of each frame (the default form),
            else this fixed number (the paper form: the max_objects slots of the public code).

    Returns:
        Scalar: sum over valid objects and channels of |fused_s - fused_t| (divide by the number of valid
        objects of ALL tasks to get the loss).
    """
    n = mask.sum(dim=1) if slots is None else torch.full((mask.shape[0],), slots, device=mask.device)
    # float32 with autocast off: X^T X sums over all objects and could overflow half precision
    with torch.autocast(device_type=mask.device.type, enabled=False):
        x_s, x_t = x_s.float(), x_t.detach().float()
        if standardize:
            scale = teacher_channel_scale(x_t, mask)
            x_s, x_t = x_s / scale, x_t / scale
        f_s = fusion(inter_intra(x_s, splits, n))
        f_t = fusion(inter_intra(x_t, splits, n))
        return ((f_s - f_t).abs() * mask.unsqueeze(-1).to(f_s.dtype)).sum()
