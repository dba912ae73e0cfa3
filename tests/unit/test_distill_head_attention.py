"""Head relation-aware attention loss: numpy reference, masking, heatmap form, fusion guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import TaskHeadOutput
from itkd_cli.distill.head_attention import (
    HeadFusion, head_attention_sum, head_features, head_splits, inter_intra)
from itkd_cli.distill.losses import gather_at_centres

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores


def _head(b: int, n_cls: int, h: int, w: int, vel: bool, scale: float = 1.0) -> TaskHeadOutput:
    r = lambda c: torch.randn(b, c, h, w) * scale  # noqa: E731
    return TaskHeadOutput(r(n_cls), r(2), r(1), r(3), r(2), r(2) if vel else None)


def _np_attention(x: np.ndarray) -> np.ndarray:
    """x (N, C) -> x . softmax over input channels of x^T x / sqrt(N), written out step by step."""
    n = x.shape[0]
    scores = x.T @ x / np.sqrt(n)
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    attn = e / e.sum(axis=0, keepdims=True)  # column j: weights of input channels i for output j
    return x @ attn


def _np_fused(vec: np.ndarray, splits: tuple[int, ...]) -> np.ndarray:
    """One object's concatenated head vector (C,) -> fused (C,) with the [I | I] / 2 fusion."""
    return _np_fused_rows(vec[None, :], splits)[0]


def test_head_splits_follow_head_config():
    assert head_splits(3, False) == (3, 2, 1, 3, 2)
    assert head_splits(2, True) == (2, 2, 1, 3, 2, 2)


def test_one_object_one_task_matches_numpy_step_by_step():
    torch.manual_seed(0)
    s, t = _head(1, 1, 2, 3, vel=False, scale=0.5), _head(1, 1, 2, 3, vel=False, scale=0.5)
    ind, mask = torch.tensor([[4]]), torch.tensor([[True]])  # cell (y=1, x=1)
    splits = head_splits(1, False)
    fusion = HeadFusion(sum(splits), "frozen")
    got = head_attention_sum(s, t, ind, mask, fusion, splits, with_velocity=False) / mask.sum()

    def vec(o: TaskHeadOutput) -> np.ndarray:
        hm = 1.0 / (1.0 + np.exp(-o.hm[0, :, 1, 1].numpy().astype(np.float64)))  # sigmoid both sides
        rest = [o.center, o.center_z, o.dim, o.rot]
        return np.concatenate([hm] + [r[0, :, 1, 1].numpy().astype(np.float64) for r in rest])

    want = np.abs(_np_fused(vec(s), splits) - _np_fused(vec(t), splits)).sum() / 1.0
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_attention_over_valid_objects_matches_numpy():
    x = torch.randn(1, 4, 5)
    x[0, 3] = 0.0  # padded row
    out = inter_intra(x, (2, 3), torch.tensor([3]))
    ref = _np_attention(x[0, :3].double().numpy())
    assert np.allclose(out[0, :3, :5].numpy(), ref, atol=1e-5)
    assert out[0, 3].abs().sum() == 0
    with pytest.raises(ItkdError):
        inter_intra(x, (2, 2), torch.tensor([3]))


def test_padded_slots_do_not_contribute():
    torch.manual_seed(1)
    s, t = _head(2, 2, 4, 4, vel=True), _head(2, 2, 4, 4, vel=True)
    splits, fusion = head_splits(2, True), HeadFusion(sum(head_splits(2, True)), "normalize")
    ind = torch.tensor([[1, 5], [7, 2]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    base = head_attention_sum(s, t, ind, mask, fusion, splits, True)
    ind_pad = torch.tensor([[1, 5, 9, 15, 3], [7, 2, 0, 11, 6]])
    mask_pad = torch.tensor([[True, True, False, False, False], [True, True, False, False, False]])
    padded = head_attention_sum(s, t, ind_pad, mask_pad, fusion, splits, True)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    none = head_attention_sum(s, t, ind_pad, torch.zeros_like(mask_pad), fusion, splits, True)
    assert none.item() == 0.0


def test_heatmap_form_is_the_same_on_both_sides_and_not_in_place():
    """Defect 4: identical logits on both sides give exactly 0, and the logits stay untouched."""
    torch.manual_seed(2)
    t = _head(1, 3, 4, 4, vel=True, scale=3.0)
    s = TaskHeadOutput(*(x.clone().requires_grad_(True) for x in t))
    before = s.hm.detach().clone()
    version = s.hm._version
    splits = head_splits(3, True)
    loss = head_attention_sum(s, t, torch.tensor([[0, 6]]), torch.tensor([[True, True]]),
                              HeadFusion(sum(splits), "none"), splits, True)
    assert loss.item() == 0.0
    assert s.hm._version == version and torch.equal(s.hm.detach(), before)
    feats = head_features(t, True)
    assert torch.allclose(feats[:, :3], torch.sigmoid(t.hm))
    with pytest.raises(ItkdError):
        head_features(t, False)


def _optimise_fusion(guard: str, steps: int = 200):
    """Adam on the fusion alone against fixed student/teacher outputs: (losses, fusion, data).

    The attention is parameter-free, so inter/intra rows are computed once; the first loss is
    checked against the full ``head_attention_sum``.
    """
    torch.manual_seed(0)
    s, t = _head(2, 2, 8, 8, vel=True), _head(2, 2, 8, 8, vel=True)
    ind = torch.stack([torch.randperm(64)[:40] for _ in range(2)])
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    splits = head_splits(2, True)
    fusion = HeadFusion(sum(splits), guard)
    n_valid, m = mask.sum(dim=1), mask.unsqueeze(-1).float()
    u_s = inter_intra(gather_at_centres(head_features(s, True), ind, mask), splits, n_valid)
    u_t = inter_intra(gather_at_centres(head_features(t, True), ind, mask), splits, n_valid)
    full = (head_attention_sum(s, t, ind, mask, fusion, splits, True) / mask.sum()).item()
    params = list(fusion.parameters())
    opt = torch.optim.Adam(params, lr=1e-2) if params else None
    losses = []
    for _ in range(steps):
        loss = ((fusion(u_s) - fusion(u_t)).abs() * m).sum() / mask.sum()
        losses.append(loss.item())
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert losses[0] == pytest.approx(full, rel=1e-5)
    return losses, fusion, (u_s, u_t, mask, splits)


def test_unguarded_fusion_collapses():
    torch.manual_seed(0)
    init_norm = HeadFusion(12, "none").weight().norm().item()  # same seed and shape as inside
    losses, fusion, _ = _optimise_fusion("none")
    assert losses[-1] < 0.05 * losses[0]  # the loss is cheated away by the shared conv
    assert fusion.weight().norm().item() < 0.5 * init_norm


def test_default_guard_cannot_collapse():
    """normalize: 200 Adam steps on the fusion alone cannot beat the exact per-channel optimum."""
    losses, fusion, (u_s, u_t, mask, splits) = _optimise_fusion("normalize")
    c = sum(splits)
    d = (u_s - u_t)[mask].double()  # (objects, 2C)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    # best possible loss over every allowed fusion: per channel min over a of sum |a d_inter + (1-a) d_intra|
    per_a = (grid[:, None, None] * d[None, :, :c] + (1 - grid[:, None, None]) * d[None, :, c:]).abs().sum(1)
    bound = per_a.min(dim=0).values.sum().item() / mask.sum().item()
    assert min(losses) >= bound * (1 - 1e-3)
    assert bound > 0.5 * losses[0]  # the guard leaves nothing near 0 to reach
    w = fusion.weight()
    assert torch.allclose(w.sum(dim=1), torch.ones(c)) and (w >= 0).all()
    assert not any(p.grad is None for p in fusion.parameters())


def test_frozen_guard_never_changes():
    losses, fusion, _ = _optimise_fusion("frozen", steps=3)
    assert losses[0] == losses[-1] and list(fusion.parameters()) == []


def test_unknown_guard_is_a_user_error():
    with pytest.raises(ItkdError):
        HeadFusion(4, "shrink")


def _np_fused_rows(x: np.ndarray, splits: tuple[int, ...]) -> np.ndarray:
    """Rows (N, C) of one frame -> fused rows (N, C) with the [I | I] / 2 fusion."""
    blocks, start = [], 0
    for s in splits:
        blocks.append(_np_attention(x[:, start:start + s]))
        start += s
    return 0.5 * _np_attention(x) + 0.5 * np.concatenate(blocks, axis=1)


def test_standardised_head_loss_matches_numpy():
    """head_standardize: both sides divided by the teacher's per-channel RMS over the batch's valid objects."""
    torch.manual_seed(3)
    s, t = _head(2, 2, 4, 4, vel=True), _head(2, 2, 4, 4, vel=True, scale=3.0)
    ind = torch.tensor([[1, 5, 9], [7, 2, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    splits = head_splits(2, True)
    got = head_attention_sum(s, t, ind, mask, HeadFusion(sum(splits), "frozen"), splits, True, standardize=True)

    def rows(o: TaskHeadOutput, b: int, cells: list[int]) -> np.ndarray:
        feats = head_features(o, True)[b].reshape(sum(splits), -1).double().numpy()
        return feats[:, cells].T

    cells = [[1, 5, 9], [7, 2]]
    x_s = [rows(s, b, c) for b, c in enumerate(cells)]
    x_t = [rows(t, b, c) for b, c in enumerate(cells)]
    rms = np.sqrt((np.concatenate(x_t) ** 2).mean(axis=0))  # over the 5 valid objects of the batch
    want = sum(np.abs(_np_fused_rows(a / rms, splits) - _np_fused_rows(b / rms, splits)).sum()
               for a, b in zip(x_s, x_t))
    assert got.item() == pytest.approx(want, rel=1e-4)
    raw = head_attention_sum(s, t, ind, mask, HeadFusion(sum(splits), "frozen"), splits, True)
    assert abs(raw.item() - got.item()) > 1e-3  # the option changes the loss


def test_standardised_head_loss_ignores_channel_units():
    """Box sizes in other units (both sides x10) leave the standardised loss unchanged, not the raw one."""
    torch.manual_seed(4)
    s, t = _head(1, 3, 4, 4, vel=False), _head(1, 3, 4, 4, vel=False)
    ind, mask = torch.tensor([[0, 3, 6, 10]]), torch.ones(1, 4, dtype=torch.bool)
    splits, fusion = head_splits(3, False), HeadFusion(sum(head_splits(3, False)), "normalize")
    big = lambda o: o._replace(dim=o.dim * 10.0)  # noqa: E731

    def loss(a, b, standardize):
        return head_attention_sum(a, b, ind, mask, fusion, splits, False, standardize=standardize).item()

    assert loss(big(s), big(t), True) == pytest.approx(loss(s, t, True), rel=1e-4)
    assert loss(big(s), big(t), False) > 2 * loss(s, t, False)
    one = torch.tensor([[True, False, False, False]])  # fewer than two objects: no scale, the raw loss
    assert head_attention_sum(s, t, ind, one, fusion, splits, False, standardize=True).item() == pytest.approx(
        head_attention_sum(s, t, ind, one, fusion, splits, False).item())


def test_smooth_head_loss_matches_numpy_huber_and_its_gradient_shrinks_near_the_teacher():
    """head_smooth_beta: Huber on the fused rows (0.5 d^2 / beta below beta, |d| - beta / 2 above); 0 is L1."""
    torch.manual_seed(5)
    s, t = _head(1, 2, 3, 3, vel=False), _head(1, 2, 3, 3, vel=False)
    ind, mask = torch.tensor([[0, 4, 8]]), torch.tensor([[True, True, False]])
    splits = head_splits(2, False)
    fusion = HeadFusion(sum(splits), "frozen")
    beta = 0.5

    def rows(o: TaskHeadOutput) -> np.ndarray:
        return head_features(o, False)[0].reshape(sum(splits), -1).double().numpy()[:, [0, 4]].T

    d = np.abs(_np_fused_rows(rows(s), splits) - _np_fused_rows(rows(t), splits))
    huber = np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).sum()
    assert (d < beta).any() and (d >= beta).any()  # both branches are exercised
    got = head_attention_sum(s, t, ind, mask, fusion, splits, False, smooth_beta=beta)
    assert got.item() == pytest.approx(huber, rel=1e-5)
    assert head_attention_sum(s, t, ind, mask, fusion, splits, False, smooth_beta=0.0).item() == pytest.approx(
        d.sum(), rel=1e-5)
    # a student a hair away from its teacher: L1 still pulls at full strength, smooth L1 barely
    near = TaskHeadOutput(*(None if m is None else (m + 1e-3 * torch.randn_like(m)).requires_grad_() for m in t))

    def grad_norm(beta_: float) -> float:
        loss = head_attention_sum(near, t, ind, mask, fusion, splits, False, smooth_beta=beta_)
        grads = torch.autograd.grad(loss, [m for m in near if m is not None])
        return float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))

    assert grad_norm(1.0) < 0.05 * grad_norm(0.0)
