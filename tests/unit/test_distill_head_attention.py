"""Head relation-aware attention loss: numpy reference, masking, heatmap form, fusion guards, and the
normalisers of both forms (standardised channels and sqrt(N) over valid objects: default; sqrt(max_objects): paper)."""

from __future__ import annotations

import math

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


def _sum(s: TaskHeadOutput, t: TaskHeadOutput, ind: torch.Tensor, mask: torch.Tensor, fusion: HeadFusion,
         splits: tuple[int, ...], vel: bool, standardize: bool = False, slots: int | None = None) -> torch.Tensor:
    """head_attention_sum on the head outputs gathered at the centres, as ItkdDistiller.head_loss does."""
    x_s = gather_at_centres(head_features(s, vel), ind, mask)
    x_t = gather_at_centres(head_features(t, vel), ind, mask)
    return head_attention_sum(x_s, x_t, mask, fusion, splits, standardize=standardize, slots=slots)


def _np_attention(x: np.ndarray, n: float | None = None) -> np.ndarray:
    """x (N, C) -> x . softmax over input channels of x^T x / sqrt(n), written out step by step (n: N)."""
    n = x.shape[0] if n is None else n
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
    got = _sum(s, t, ind, mask, fusion, splits, False) / mask.sum()

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
    base = _sum(s, t, ind, mask, fusion, splits, True)
    ind_pad = torch.tensor([[1, 5, 9, 15, 3], [7, 2, 0, 11, 6]])
    mask_pad = torch.tensor([[True, True, False, False, False], [True, True, False, False, False]])
    padded = _sum(s, t, ind_pad, mask_pad, fusion, splits, True)
    assert padded.item() == pytest.approx(base.item(), rel=1e-6)
    none = _sum(s, t, ind_pad, torch.zeros_like(mask_pad), fusion, splits, True)
    assert none.item() == 0.0


def test_heatmap_form_is_the_same_on_both_sides_and_not_in_place():
    """Defect 4: identical logits on both sides give exactly 0, and the logits stay untouched."""
    torch.manual_seed(2)
    t = _head(1, 3, 4, 4, vel=True, scale=3.0)
    s = TaskHeadOutput(*(x.clone().requires_grad_(True) for x in t))
    before = s.hm.detach().clone()
    version = s.hm._version
    splits = head_splits(3, True)
    loss = _sum(s, t, torch.tensor([[0, 6]]), torch.tensor([[True, True]]), HeadFusion(sum(splits), "none"),
                splits, True)
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
    full = (_sum(s, t, ind, mask, fusion, splits, True) / mask.sum()).item()
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


def test_unknown_guard_is_a_programming_error():
    """The guard is no recipe field any more (the fusion is always 'normalize'): a bad one is a ValueError."""
    with pytest.raises(ValueError, match="shrink"):
        HeadFusion(4, "shrink")
    assert all(HeadFusion(4, g).guard == g for g in ("normalize", "frozen", "none"))


def _np_fused_rows(x: np.ndarray, splits: tuple[int, ...], n: float | None = None) -> np.ndarray:
    """Rows (N, C) of one frame -> fused rows (N, C) with the [I | I] / 2 fusion (sqrt(n) temperature, n: N)."""
    blocks, start = [], 0
    for s in splits:
        blocks.append(_np_attention(x[:, start:start + s], n))
        start += s
    return 0.5 * _np_attention(x, n) + 0.5 * np.concatenate(blocks, axis=1)


def test_standardised_head_loss_matches_numpy():
    """standardize (the default form): both sides divided by the teacher's per-channel RMS over the batch's
    valid objects."""
    torch.manual_seed(3)
    s, t = _head(2, 2, 4, 4, vel=True), _head(2, 2, 4, 4, vel=True, scale=3.0)
    ind = torch.tensor([[1, 5, 9], [7, 2, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    splits = head_splits(2, True)
    got = _sum(s, t, ind, mask, HeadFusion(sum(splits), "frozen"), splits, True, standardize=True)

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
    raw = _sum(s, t, ind, mask, HeadFusion(sum(splits), "frozen"), splits, True)
    assert abs(raw.item() - got.item()) > 1e-3  # the option changes the loss


def test_standardised_head_loss_ignores_channel_units():
    """Box sizes in other units (both sides x10) leave the standardised loss unchanged, not the raw one."""
    torch.manual_seed(4)
    s, t = _head(1, 3, 4, 4, vel=False), _head(1, 3, 4, 4, vel=False)
    ind, mask = torch.tensor([[0, 3, 6, 10]]), torch.ones(1, 4, dtype=torch.bool)
    splits, fusion = head_splits(3, False), HeadFusion(sum(head_splits(3, False)), "normalize")
    big = lambda o: o._replace(dim=o.dim * 10.0)  # noqa: E731

    def loss(a, b, standardize):
        return _sum(a, b, ind, mask, fusion, splits, False, standardize=standardize).item()

    assert loss(big(s), big(t), True) == pytest.approx(loss(s, t, True), rel=1e-4)
    assert loss(big(s), big(t), False) > 2 * loss(s, t, False)
    one = torch.tensor([[True, False, False, False]])  # fewer than two objects: no scale, the raw loss
    assert _sum(s, t, ind, one, fusion, splits, False, standardize=True).item() == pytest.approx(
        _sum(s, t, ind, one, fusion, splits, False).item())


# Two valid objects with swapped one-hot rows and a padded slot. X^T X = I on both sides, so the inter
# attention is [[p, 1 - p], [1 - p, p]] with p = softmax([a, 0])[0] = sigmoid(a), a = 1 / sqrt(N); the intra
# blocks hold one channel each (softmax over one channel: out = x). Fused [I | I] / 2 rows:
#   student [1, 0] -> ([p, 1-p] + [1, 0]) / 2,  teacher [0, 1] -> ([1-p, p] + [0, 1]) / 2: |diff| sums to 2p;
#   the second object likewise: the loss is 4p = 4 sigmoid(1 / sqrt(N)).
_X_S = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # (B=1, M=3, C=2)
_X_T = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
_MASK = torch.tensor([[True, True, False]])


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


@pytest.mark.parametrize("slots, n", [(None, 2), (9, 9), (100, 100), (3, 3)])
def test_attention_temperature_by_hand(slots, n):
    """slots None: N = the 2 valid objects (default form); else N = slots (paper form, max_objects)."""
    got = head_attention_sum(_X_S, _X_T, _MASK, HeadFusion(2, "frozen"), (1, 1), standardize=False, slots=slots)
    assert got.item() == pytest.approx(4 * _sigmoid(1 / math.sqrt(n)), rel=1e-6)


def test_standardised_attention_by_hand():
    """The teacher's RMS is sqrt(1/2) in both channels: X -> sqrt(2) X, X^T X = 2 I, so the loss is
    sqrt(2) * 4 sigmoid(2 / sqrt(N)) (the attention output is linear in X once the weights are fixed)."""
    got = head_attention_sum(_X_S, _X_T, _MASK, HeadFusion(2, "frozen"), (1, 1), standardize=True)
    assert got.item() == pytest.approx(math.sqrt(2) * 4 * _sigmoid(2 / math.sqrt(2)), rel=1e-6)


@pytest.mark.parametrize("slots", [7, 500])
def test_paper_slots_attention_matches_numpy(slots):
    """Random rows, two frames with 3 and 2 valid objects of 4 slots: softmax_i(X^T X / sqrt(slots)) in numpy."""
    torch.manual_seed(6)
    splits = (2, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    x_s = torch.randn(2, 4, 5) * mask.unsqueeze(-1)
    x_t = torch.randn(2, 4, 5) * mask.unsqueeze(-1)
    got = head_attention_sum(x_s, x_t, mask, HeadFusion(5, "frozen"), splits, standardize=False, slots=slots)
    want = 0.0
    for b, k in enumerate((3, 2)):
        a, c = x_s[b, :k].double().numpy(), x_t[b, :k].double().numpy()
        want += np.abs(_np_fused_rows(a, splits, slots) - _np_fused_rows(c, splits, slots)).sum()
    assert got.item() == pytest.approx(want, rel=1e-5)
    valid = head_attention_sum(x_s, x_t, mask, HeadFusion(5, "frozen"), splits, standardize=False)
    assert abs(valid.item() - got.item()) > 1e-3  # sqrt(slots) is not sqrt(valid objects)
    # padding beyond the given slots changes nothing: N is the slots argument, not the rows of X
    pad = lambda x: torch.cat([x, torch.zeros(2, 3, 5)], dim=1)  # noqa: E731
    wider = head_attention_sum(pad(x_s), pad(x_t), torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1),
                               HeadFusion(5, "frozen"), splits, standardize=False, slots=slots)
    assert wider.item() == pytest.approx(got.item(), rel=1e-6)


def test_head_attention_sum_detaches_the_teacher():
    x_s = _X_S.clone().requires_grad_(True)
    x_t = _X_T.clone().requires_grad_(True)
    head_attention_sum(x_s, x_t, _MASK, HeadFusion(2, "normalize"), (1, 1), standardize=True, slots=4).backward()
    assert x_t.grad is None and x_s.grad is not None and x_s.grad[0, :2].abs().sum() > 0
