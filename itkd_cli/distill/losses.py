"""Pure itKD loss functions (no parameters, no state): tensors in, scalar tensors out.

Reductions are chosen so that the number of task heads never multiplies a loss (defect 6 of the
public code): objects of all task heads are pooled once; the default form averages over VALID objects,
the paper form over the max_objects slots as the public code.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import TaskTargets


class KDTerms(NamedTuple):
    """Scalar distillation terms of one step; a term a method does not use is 0.

    cr: itKD compressed-representation loss L_cr (unweighted).
    it: itKD interchange-transfer loss L_it (unweighted).
    head: itKD head relation-aware attention loss (unweighted).
    hm: heatmap KD of the baselines (hinton, sparsekd) (unweighted).
    feat: BEV feature mimic of the fitnet baseline (unweighted).
    total: the weighted sum that enters ``combine``.
    """

    cr: Tensor
    it: Tensor
    head: Tensor
    hm: Tensor
    feat: Tensor
    total: Tensor


def zero_terms(ref: Tensor, **terms: Tensor) -> KDTerms:
    """KDTerms with the given fields set and every other field a 0 scalar on ``ref``'s device."""
    zero = ref.new_zeros(())
    return KDTerms(**{name: terms.get(name, zero) for name in KDTerms._fields})


def combine(det_loss: Tensor, kd_total: Tensor, lam: float) -> Tensor:
    """Total training loss ``lam * kd + (1 - lam) * det`` (lam = lambda of the recipe)."""
    return lam * kd_total + (1.0 - lam) * det_loss


def pooled_centres(targets: Sequence[TaskTargets]) -> tuple[Tensor, Tensor]:
    """All ground-truth centres of all task heads, each object once.

    Every class belongs to exactly one task head, so concatenating the task slots lists each object
    once whatever the number of heads.

    Args:
        targets: One TaskTargets per task head (ind, mask of shape (B, M_k)).

    Returns:
        ind (B, sum M_k) int64 and mask (B, sum M_k) bool.
    """
    if not targets:
        raise ItkdError("targets: no task head targets given to the distillation loss")
    ind = torch.cat([t.ind for t in targets], dim=1)
    mask = torch.cat([t.mask for t in targets], dim=1)
    return ind, mask


def gather_at_centres(feat: Tensor, ind: Tensor, mask: Tensor) -> Tensor:
    """Sample a map at object centre cells; padded slots come back as zero rows.

    Args:
        feat: Map (B, C, H, W).
        ind: Flat cell index y * W + x (B, M), int64.
        mask: Valid slots (B, M), bool.

    Returns:
        (B, M, C) features at the centres, zero where ``mask`` is False.
    """
    b, c, h, w = feat.shape
    if ind.shape[0] != b:
        raise ItkdError(f"targets.ind: batch {ind.shape[0]} does not match the feature batch {b}")
    safe = torch.where(mask, ind, torch.zeros_like(ind))  # padded slots may hold anything
    flat = feat.reshape(b, c, h * w)
    out = flat.gather(2, safe.unsqueeze(1).expand(b, c, safe.shape[1]))  # (B, C, M)
    return out.transpose(1, 2) * mask.unsqueeze(-1).to(feat.dtype)


def mse_at_centres(pred: Tensor, target: Tensor, ind: Tensor, mask: Tensor, slots: Optional[int] = None) -> Tensor:
    """MSE_gt: squared error at the ground-truth centres.

    ``sum_valid sum_c (p - t)^2 / (n * C)`` with n the VALID objects of the batch (``slots`` None, the default
    form) or ``B * slots`` (the paper form: the public code averages over all max_objects slots, padded ones
    included, which makes the term 25-43x weaker on the embedded world). With no valid object it returns 0
    (still attached to the graph, never NaN).

    Args:
        pred: (B, C, H, W).
        target: (B, C, H, W).
        ind: (B, M) flat centre indices.
        mask: (B, M) bool.
        slots: Object slots per frame of the paper form, or None.

    Returns:
        Scalar tensor.
    """
    # float32: a half-precision sum over objects x channels could overflow under autocast
    diff = (gather_at_centres(pred, ind, mask) - gather_at_centres(target, ind, mask)).float()
    n = mask.sum().clamp(min=1).float() if slots is None else float(pred.shape[0] * slots)
    return diff.pow(2).sum() / (n * pred.shape[1])


def cr_loss(z_s: Tensor, z_t: Tensor, normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """L_cr = L1(E(A(M_s)), E(M_t)) over the latent map, optionally in teacher-latent units.

    The plain form (``normalize=False``) is the mean absolute difference over every element. It has a
    degenerate minimum: the shared encoder can shrink (or offset) its latent and the decoder undo it,
    which drives L_cr to 0 without the codes agreeing (measured: 0.035 -> 0.000 in ~25 steps; the
    extreme case, dead hidden ReLUs giving both sides the same constant code, is prevented by keeping
    L_cr's gradient off the encoder, as the default form does). With
    ``normalize=True`` each latent channel's mean absolute difference is divided by that channel's
    standard deviation of the teacher code (population std over batch and map, kept in the graph),
    so the loss is invariant to any per-channel affine change of the latent and cannot be cheated.

    Args:
        z_s: Student latent code E(A(M_s)) (B, L, H, W).
        z_t: Teacher latent code E(M_t) (B, L, H, W).
        normalize: Divide per channel by std(z_t) (see above).
        eps: Floor of the std (a dead channel contributes its raw difference / eps, i.e. 0 when equal).

    Returns:
        Scalar tensor.
    """
    if not normalize:
        return F.l1_loss(z_s, z_t, reduction="mean")
    diff = (z_s - z_t).abs().float().mean(dim=(0, 2, 3))  # (L,)
    std = z_t.float().std(dim=(0, 2, 3), unbiased=False).clamp(min=eps)
    return (diff / std).mean()


def it_loss(s2t: Tensor, m_t: Tensor, t2s: Tensor, m_s: Tensor, ind: Tensor, mask: Tensor,
            detach_student_target: bool, slots: Optional[int] = None) -> Tensor:
    """L_it = [L1(S->T, M_t) + MSE_gt(S->T, M_t)] + [L1(T->S, M_s) + MSE_gt(T->S, M_s)].

    The teacher map is always detached. L1 terms are means over every map element; MSE_gt terms
    average as ``mse_at_centres`` with ``slots``.

    Args:
        s2t: A(D(E(A(M_s)))) (B, C_t, H, W).
        m_t: Teacher map M_t (B, C_t, H, W).
        t2s: D(E(M_t)) (B, C_s, H, W).
        m_s: Student map M_s (B, C_s, H, W).
        ind: (B, M) flat centre indices of all objects.
        mask: (B, M) bool.
        detach_student_target: Detach M_s as the target of T->S (the default form; the public code does not).
        slots: See ``mse_at_centres``.

    Returns:
        Scalar tensor.
    """
    m_t = m_t.detach()
    tgt_s = m_s.detach() if detach_student_target else m_s
    s_to_t = F.l1_loss(s2t, m_t) + mse_at_centres(s2t, m_t, ind, mask, slots)
    t_to_s = F.l1_loss(t2s, tgt_s) + mse_at_centres(t2s, tgt_s, ind, mask, slots)
    return s_to_t + t_to_s


def check_centres(ind: Tensor, mask: Tensor, h: int, w: int) -> None:
    """Raise an ItkdError when a valid centre index falls outside an (h, w) map (one device sync)."""
    bad = mask & ((ind < 0) | (ind >= h * w))
    if bool(bad.any()):
        raise ItkdError(f"targets.ind: object centres outside the {h}x{w} head map",
                        hint="targets must be assigned on the same grid and stride as the model's head")


def check_same_grid(student: Tensor, teacher: Tensor, what: str) -> None:
    """Raise an ItkdError when two maps differ in batch or spatial size (they must align pixelwise)."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ItkdError(
            f"{what}: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} do not align",
            hint="teacher and student must share the voxel grid and the neck's output stride")
