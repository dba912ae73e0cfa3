"""Pure itKD losses against hand-computed values: gather, MSE_gt, L_cr, L_it, combine."""

from __future__ import annotations

import math

import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import TaskTargets
from itkd_cli.distill.autoencoder import ChannelAutoencoder, build_adapter, encoder_widths
from itkd_cli.distill.losses import combine, cr_loss, gather_at_centres, it_loss, mse_at_centres, pooled_centres
from itkd_cli.recipe.schema import ItkdLossConfig


def _map(values: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, W) map from a list of C channel rows."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(0).unsqueeze(2)


def test_gather_at_centres_picks_cells_and_zeroes_padding():
    feat = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    ind = torch.tensor([[3, 1, 99], [0, 2, 2]])  # 99: garbage in a padded slot
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = gather_at_centres(feat, ind, mask)
    assert out.shape == (2, 3, 3)
    # frame 0, slot 0: cell 3 = (y=1, x=1) of each channel
    assert out[0, 0].tolist() == [feat[0, c, 1, 1].item() for c in range(3)]
    assert out[0, 1].tolist() == [feat[0, c, 0, 1].item() for c in range(3)]
    assert out[1, 0].tolist() == [feat[1, c, 0, 0].item() for c in range(3)]
    assert out[0, 2].abs().sum() == 0 and out[1, 1:].abs().sum() == 0


def test_mse_at_centres_averages_over_valid_objects_only():
    pred = _map([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = _map([[0.0, 0.0, 10.0], [1.0, 1.0, 1.0]])
    ind = torch.tensor([[0, 1, 2, 2, 2]])
    mask = torch.tensor([[True, True, False, False, False]])  # 3 padded slots pointing at a huge error
    # valid: cell 0 -> (1-0)^2 + (0-1)^2 = 2 ; cell 1 -> (2-0)^2 + (0-1)^2 = 5 ; / (2 objects * 2 ch)
    assert mse_at_centres(pred, target, ind, mask).item() == pytest.approx(7.0 / 4.0)


def test_mse_at_centres_zero_objects_is_zero_not_nan():
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    ind = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    loss = mse_at_centres(pred, torch.randn(2, 3, 4, 4), ind, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def _two_frames() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred, target (2, C=2, 1, 3) and 3 slots a frame: frame 0 has 2 valid objects, frame 1 one."""
    pred = torch.cat([_map([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), _map([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])])
    target = torch.cat([_map([[0.0, 0.0, 10.0], [1.0, 1.0, 1.0]]), _map([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])])
    ind = torch.tensor([[0, 1, 2], [2, 0, 1]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    return pred, target, ind, mask


# squared errors at the valid centres: frame 0 cell 0 (1-0)^2 + (0-1)^2 = 2, cell 1 (2-0)^2 + (0-1)^2 = 5;
# frame 1 cell 2 (1-0)^2 + (1-0)^2 = 2: 9 in all, over C = 2 channels
@pytest.mark.parametrize("slots, expected", [
    (None, 9.0 / (3 * 2)),  # default form: 3 valid objects
    (5, 9.0 / (2 * 5 * 2)),  # paper form: B = 2 frames x 5 slots, more slots than the targets hold
    (3, 9.0 / (2 * 3 * 2)),  # ... or exactly the M = 3 slots given: padded ones count in the mean
])
def test_mse_at_centres_normaliser_by_hand(slots, expected):
    pred, target, ind, mask = _two_frames()
    assert mse_at_centres(pred, target, ind, mask, slots=slots).item() == pytest.approx(expected)


def test_mse_at_centres_paper_slots_ignore_how_many_objects_are_valid():
    """B * slots does not move with the mask: dropping an object removes its error and nothing else."""
    pred, target, ind, mask = _two_frames()
    fewer = mask.clone()
    fewer[0, 1] = False  # frame 0 cell 1, error 5
    assert mse_at_centres(pred, target, ind, fewer, slots=5).item() == pytest.approx((9.0 - 5.0) / 20)
    assert mse_at_centres(pred, target, ind, fewer).item() == pytest.approx((9.0 - 5.0) / (2 * 2))
    none = torch.zeros_like(mask)
    assert mse_at_centres(pred, target, ind, none, slots=5).item() == 0.0


def test_cr_loss_plain_is_mean_abs_difference():
    z_s = torch.tensor([[[[1.0, -2.0]], [[0.5, 4.0]]]])
    z_t = torch.tensor([[[[0.0, 1.0]], [[0.5, 2.0]]]])
    assert cr_loss(z_s, z_t, normalize=False).item() == pytest.approx((1 + 3 + 0 + 2) / 4)


def test_cr_loss_normalized_by_hand():
    z_s = torch.tensor([[[[1.0, -2.0]], [[0.5, 4.0]]]])
    z_t = torch.tensor([[[[0.0, 1.0]], [[0.5, 2.0]]]])
    # channel 0: mean |diff| (1 + 3) / 2 = 2, std of [0, 1] = 0.5 -> 4
    # channel 1: mean |diff| (0 + 2) / 2 = 1, std of [0.5, 2] = 0.75 -> 4/3
    assert cr_loss(z_s, z_t).item() == pytest.approx((4 + 4 / 3) / 2)


def test_cr_loss_normalized_cannot_be_cheated_by_rescaling_the_latent():
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    scale = torch.tensor([0.01, 10.0, 1.0]).view(1, 3, 1, 1)
    shift = torch.tensor([5.0, -3.0, 0.0]).view(1, 3, 1, 1)
    # a shared encoder that shrinks/offsets its latent changes both codes the same way
    assert cr_loss(z_s * scale + shift, z_t * scale + shift).item() == pytest.approx(cr_loss(z_s, z_t).item(), rel=1e-5)
    # ... which is exactly how the plain form collapses
    assert cr_loss(z_s * 0.01, z_t * 0.01, normalize=False) < 0.02 * cr_loss(z_s, z_t, normalize=False)


@pytest.mark.parametrize("slots", [None, 4])
@pytest.mark.parametrize("detach", [False, True])
def test_it_loss_by_hand(slots, detach):
    s2t = _map([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (1, C_t=2, 1, 3)
    m_t = _map([[0.0, 2.0, 5.0], [4.0, 3.0, 6.0]])
    t2s = _map([[1.0, 1.0, 1.0]])  # (1, C_s=1, 1, 3)
    m_s = _map([[0.0, 3.0, 1.0]])
    ind = torch.tensor([[1, 2]])
    mask = torch.tensor([[True, False]])
    n = 1 if slots is None else 1 * slots  # 1 valid object (default form) or B=1 x slots (paper form)
    l1_st = (1 + 0 + 2 + 0 + 2 + 0) / 6
    mse_st = ((2 - 2) ** 2 + (5 - 3) ** 2) / (n * 2)  # cell 1, 2 channels
    l1_ts = (1 + 2 + 0) / 3
    mse_ts = (1 - 3) ** 2 / (n * 1)
    got = it_loss(s2t, m_t, t2s, m_s, ind, mask, detach_student_target=detach, slots=slots)
    assert got.item() == pytest.approx(l1_st + mse_st + l1_ts + mse_ts)  # detaching changes no value


def test_it_loss_detaches_teacher_and_optionally_student_target():
    m_t = torch.randn(1, 2, 2, 2, requires_grad=True)
    ind, mask = torch.tensor([[0]]), torch.tensor([[True]])
    for detach in (False, True):
        m_s = torch.randn(1, 1, 2, 2, requires_grad=True)
        s2t = torch.randn(1, 2, 2, 2, requires_grad=True)
        t2s = torch.randn(1, 1, 2, 2, requires_grad=True)
        it_loss(s2t, m_t, t2s, m_s, ind, mask, detach_student_target=detach).backward()
        assert m_t.grad is None
        assert (m_s.grad is None) == detach


def test_pooled_centres_lists_each_task_object_once():
    z = torch.zeros(1)
    t1 = TaskTargets(z, torch.tensor([[1, 2]]), torch.tensor([[True, False]]), z, z)
    t2 = TaskTargets(z, torch.tensor([[5]]), torch.tensor([[True]]), z, z)
    ind, mask = pooled_centres((t1, t2))
    assert ind.tolist() == [[1, 2, 5]] and mask.tolist() == [[True, False, True]]
    with pytest.raises(ItkdError):
        pooled_centres(())


def test_combine_weights_kd_and_detection():
    assert combine(torch.tensor(2.0), torch.tensor(6.0), 0.25).item() == pytest.approx(0.25 * 6 + 0.75 * 2)


def test_encoder_widths_derive_from_teacher_width():
    assert encoder_widths(384, 32 / 384, 2) == [384, 128, 64, 32]  # the public Waymo layout
    assert encoder_widths(192, 0.25, 2) == [192, 192, 96, 48]
    assert encoder_widths(96, 0.5, 0) == [96, 48]
    default = ItkdLossConfig()  # the recipe default reproduces the public proportions at any C_t
    assert encoder_widths(384, default.latent_ratio, default.hidden_layers) == [384, 128, 64, 32]
    assert encoder_widths(192, default.latent_ratio, default.hidden_layers) == [192, 64, 32, 16]
    with pytest.raises(ItkdError):
        encoder_widths(0, 0.25, 2)


def test_autoencoder_layers_relu_between_none_on_latent_or_output():
    ae = ChannelAutoencoder(c_t=40, c_s=12, latent_ratio=0.25, hidden_layers=1)
    enc = [type(m).__name__ for m in ae.encoder]
    dec = [type(m).__name__ for m in ae.decoder]
    assert enc == ["Conv2d", "ReLU", "Conv2d"] and dec == ["Conv2d", "ReLU", "Conv2d"]
    assert [m.out_channels for m in ae.encoder if hasattr(m, "out_channels")] == [20, 10]
    assert [m.out_channels for m in ae.decoder if hasattr(m, "out_channels")] == [20, 12]
    assert all(m.kernel_size == (1, 1) for m in ae.modules() if isinstance(m, torch.nn.Conv2d))
    x = -torch.ones(1, 40, 3, 3) * 5
    z = ae.encode(x)
    assert z.shape == (1, 10, 3, 3) and ae.decode(z).shape == (1, 12, 3, 3)
    assert not math.isnan(z.sum().item())


@pytest.mark.parametrize("fixed", [False, True])
def test_encode_through_adapter_equals_encoder_of_adapted_map(fixed):
    """E(A(x)) runs A and E's first conv as one conv: same values and same gradients as the plain chain."""
    torch.manual_seed(0)
    ae, adapter = ChannelAutoencoder(c_t=24, c_s=6, latent_ratio=0.25, hidden_layers=1), build_adapter(6, 24)
    x = torch.randn(2, 6, 4, 5, requires_grad=True)
    w = torch.randn(2, 6, 4, 5)  # a generic downstream loss, so every gradient entry is exercised

    def grads(z):
        params = [x, *adapter.parameters(), *ae.encoder.parameters()]
        return torch.autograd.grad((z * w[:, : z.shape[1]]).sum(), params, allow_unused=True)

    want_z = ae.encoder(adapter(x))
    got_z = ae.encode(x, adapter, fixed=fixed)
    torch.testing.assert_close(got_z, want_z, rtol=1e-5, atol=1e-5)
    want, got = grads(want_z), grads(got_z)
    n_enc = len(list(ae.encoder.parameters()))
    for k, (g, ref) in enumerate(zip(got, want)):
        if fixed and k >= len(want) - n_enc:
            assert g is None  # the encoder learns nothing through a fixed encode
        else:
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ae.encode(w.repeat(1, 4, 1, 1)), ae.encoder(w.repeat(1, 4, 1, 1)))
