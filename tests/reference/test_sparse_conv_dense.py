"""Every spconv layer type of the sparse backbones agrees with a dense conv3d reference.

Forward outputs, input-feature gradients and weight/bias gradients are compared on a small random
sparse tensor. spconv 2.3 weights are [out, kz, ky, kx, in]; dense conv3d wants [out, in, kz, ky, kx].
A regular sparse conv outputs exactly the sites whose receptive field touches an active input
(dense conv of the occupancy > 0), with the dense value there; a submanifold conv outputs only at
the input sites (the kernel centred on each, i.e. padding k//2).
"""

from __future__ import annotations

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F

from itkd_cli.models.backbones_3d import BiasSubMConv3d, set_sparse_algo

SHAPE = (7, 10, 9)  # z, y, x
C_IN, C_OUT = 3, 4


def _dtype() -> torch.dtype:
    """float64 if spconv's CPU kernels take it, else float32."""
    conv = spconv.SubMConv3d(1, 1, 3, bias=False, algo=spconv.ConvAlgo.Native).double()
    x = spconv.SparseConvTensor(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.int32), [2, 2, 2], 1)
    try:
        conv(x)
    except Exception:  # noqa: BLE001 - any kernel refusal means float64 is unsupported
        return torch.float32
    return torch.float64


DTYPE = _dtype()
TOL = dict(atol=1e-9, rtol=1e-9) if DTYPE == torch.float64 else dict(atol=1e-4, rtol=1e-4)


def random_sparse(seed: int, n_active: int = 70) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C_IN) features and (N, 4) int32 [b, z, y, x] indices of distinct random sites (batch 2)."""
    g = torch.Generator().manual_seed(seed)
    total = 2 * SHAPE[0] * SHAPE[1] * SHAPE[2]
    flat = torch.randperm(total, generator=g)[:n_active]
    b, rem = flat // (SHAPE[0] * SHAPE[1] * SHAPE[2]), flat % (SHAPE[0] * SHAPE[1] * SHAPE[2])
    z, y, x = rem // (SHAPE[1] * SHAPE[2]), (rem // SHAPE[2]) % SHAPE[1], rem % SHAPE[2]
    idx = torch.stack([b, z, y, x], 1).int()
    return torch.randn(n_active, C_IN, generator=g, dtype=DTYPE), idx


def to_dense(features: torch.Tensor, idx: torch.Tensor, shape, batch: int = 2) -> torch.Tensor:
    """Sparse (N, C) at (N, 4) indices -> dense (B, C, Z, Y, X), differentiable w.r.t. features."""
    out = features.new_zeros(batch, *shape, features.shape[1])
    out = out.index_put((idx[:, 0].long(), idx[:, 1].long(), idx[:, 2].long(), idx[:, 3].long()), features)
    return out.permute(0, 4, 1, 2, 3)


def gather(dense: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Dense (B, C, Z, Y, X) at (N, 4) indices -> (N, C)."""
    i = idx.long()
    return dense.permute(0, 2, 3, 4, 1)[i[:, 0], i[:, 1], i[:, 2], i[:, 3]]


def _layers():
    kw = dict(algo=spconv.ConvAlgo.Native)
    return {
        "subm_k3_nobias": (spconv.SubMConv3d(C_IN, C_OUT, 3, padding=1, bias=False, **kw), True, 1, 1),
        "subm_k3_bias": (BiasSubMConv3d(C_IN, C_OUT, 3, padding=1, bias=True, **kw), True, 1, 1),
        "spconv_k3_s2_p1": (spconv.SparseConv3d(C_IN, C_OUT, 3, stride=2, padding=1, bias=False, **kw), False, 2, 1),
        "spconv_k3_s2_p011": (spconv.SparseConv3d(C_IN, C_OUT, 3, stride=2, padding=(0, 1, 1), bias=False, **kw),
                              False, 2, (0, 1, 1)),
        "conv_out_k311_s211": (spconv.SparseConv3d(C_IN, C_OUT, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                                   **kw), False, (2, 1, 1), 0),
    }


@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(_layers()))
def test_sparse_layer_matches_dense_conv3d(name: str, train_mode: bool) -> None:
    conv, subm, stride, padding = _layers()[name]
    conv = conv.to(DTYPE).train(train_mode)
    set_sparse_algo(conv, torch.device("cpu"))
    with torch.no_grad():
        conv.weight.normal_()
        if conv.bias is not None:
            conv.bias.normal_()
    feats, idx = random_sparse(seed=sum(map(ord, name)))
    feats.requires_grad_(True)
    out = conv(spconv.SparseConvTensor(feats, idx, list(SHAPE), 2))

    ref_feats = feats.detach().clone().requires_grad_(True)
    ref_w = conv.weight.detach().permute(0, 4, 1, 2, 3).clone().requires_grad_(True)
    ref_b = conv.bias.detach().clone().requires_grad_(True) if conv.bias is not None else None
    dense_in = to_dense(ref_feats, idx, SHAPE)
    pad = tuple(k // 2 for k in conv.kernel_size) if subm else padding
    dense_out = F.conv3d(dense_in, ref_w, ref_b, stride=stride, padding=pad)

    if subm:
        out_idx = idx
    else:
        occupancy = to_dense(torch.ones(len(idx), 1, dtype=DTYPE), idx, SHAPE)
        hit = F.conv3d(occupancy, torch.ones(1, 1, *conv.kernel_size, dtype=DTYPE), stride=stride, padding=pad)
        assert list(out.spatial_shape) == list(hit.shape[2:])
        expected_sites = {tuple(s) for s in hit[:, 0].nonzero().tolist()}
        assert {tuple(s) for s in out.indices.tolist()} == expected_sites
        out_idx = out.indices
    ref_out = gather(dense_out, out_idx)
    torch.testing.assert_close(out.features, ref_out, **TOL)

    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(out.features.shape, generator=g, dtype=DTYPE)
    (out.features * upstream).sum().backward()
    (ref_out * upstream).sum().backward()
    torch.testing.assert_close(feats.grad, ref_feats.grad, **TOL)
    torch.testing.assert_close(conv.weight.grad.permute(0, 4, 1, 2, 3), ref_w.grad, **TOL)
    if ref_b is not None:
        torch.testing.assert_close(conv.bias.grad, ref_b.grad, **TOL)


def test_algorithm_follows_device() -> None:
    conv = spconv.SubMConv3d(1, 1, 3, algo=spconv.ConvAlgo.Native)
    set_sparse_algo(conv, torch.device("cuda"))
    assert conv.algo == spconv.ConvAlgo.MaskImplicitGemm
    set_sparse_algo(conv, torch.device("cpu"))
    assert conv.algo == spconv.ConvAlgo.Native
