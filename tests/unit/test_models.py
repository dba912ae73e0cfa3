"""CenterPoint stages against hand-computed values and OpenPCDet reference behaviour."""

from __future__ import annotations

import pytest
import spconv.pytorch as spconv
import torch
from torch import nn

from itkd_cli.core.types import DetectorOutput
from itkd_cli.models import build_model
from itkd_cli.models.backbones_2d import BaseBEVBackbone
from itkd_cli.models.dense_heads import CenterHead
from itkd_cli.models.map_to_bev import HeightCompression, PointPillarScatter
from itkd_cli.models.vfe import MeanVFE, PillarVFE
from itkd_cli.recipe import load_recipe

# +-5.12 m fits both embedded grids (0.64 m pillars, 0.16 m voxels) and all their strides
SMALL = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]


def random_frame(cfg, n_voxels: int = 300, batch: int = 2, seed: int = 0):
    """Distinct random voxels (V, P, F) / (V,) / (V, 4) inside the grid, points inside their cell."""
    g = torch.Generator().manual_seed(seed)
    nx, ny, nz = cfg.grid.grid_size
    flat = torch.randperm(batch * nx * ny * nz, generator=g)[:n_voxels]
    b, rem = flat // (nx * ny * nz), flat % (nx * ny * nz)
    z, y, x = rem // (nx * ny), (rem // nx) % ny, rem % nx
    coords = torch.stack([b, z, y, x], 1).int()
    p = cfg.grid.max_points_per_voxel
    num = torch.randint(1, p + 1, (n_voxels,), generator=g).int()
    lo, size = torch.tensor(cfg.grid.point_range[:3]), torch.tensor(cfg.grid.voxel_size)
    xyz = lo + (torch.stack([x, y, z], 1).unsqueeze(1) + torch.rand(n_voxels, p, 3, generator=g)) * size
    voxels = torch.cat([xyz, torch.rand(n_voxels, p, cfg.num_point_features - 3, generator=g)], -1)
    voxels = voxels * (torch.arange(p) < num.unsqueeze(1)).unsqueeze(-1)
    return voxels, num, coords


def test_mean_vfe_hand_values() -> None:
    voxels = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [0.0, 0.0, 0.0]]])
    out = MeanVFE(3)(voxels, torch.tensor([2]), torch.zeros(1, 4, dtype=torch.int32))
    assert torch.equal(out, torch.tensor([[2.0, 3.0, 4.0]]))


def test_pillar_vfe_augmented_features_hand_values() -> None:
    # cell (x=2, y=1, z=0), voxel 0.5 x 0.5 x 8, range from (-1, -1, -5): centre (0.25, -0.25, -1).
    vfe = PillarVFE(5, [4], (0.5, 0.5, 8.0), (-1.0, -1.0, -5.0, 1.0, 1.0, 3.0))
    seen = {}
    vfe.pfn_layers[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    voxels = torch.tensor([[[0.1, -0.3, -0.5, 0.7, 0.0], [0.3, -0.1, -1.5, 0.2, 0.1], [0.0] * 5]])
    out = vfe(voxels, torch.tensor([2]), torch.tensor([[0, 0, 1, 2]], dtype=torch.int32))
    expected = torch.tensor([
        [0.1, -0.3, -0.5, 0.7, 0.0, -0.1, -0.1, 0.5, -0.15, -0.05, 0.5],
        [0.3, -0.1, -1.5, 0.2, 0.1, 0.1, 0.1, -0.5, 0.05, 0.15, -0.5],
        [0.0] * 11])
    torch.testing.assert_close(seen["x"][0], expected)
    assert out.shape == (1, 4)


def test_pfn_non_last_layer_concatenates_pillar_max() -> None:
    vfe = PillarVFE(5, [8, 6], (0.5, 0.5, 8.0), (-1.0, -1.0, -5.0, 1.0, 1.0, 3.0)).eval()
    assert vfe.pfn_layers[0].linear.weight.shape == (4, 11)  # halved, as OpenPCDet
    x = torch.randn(3, 5, 11)
    y = vfe.pfn_layers[0](x)
    assert y.shape == (3, 5, 8)
    torch.testing.assert_close(y[:, :, 4:], y[:, :, :4].max(dim=1, keepdim=True).values.expand(-1, 5, -1))


def test_pillar_scatter_matches_openpcdet_loop() -> None:
    nx, ny, c, batch = 7, 5, 3, 2
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(batch * nx * ny, generator=g)[:20]
    coords = torch.stack([flat // (nx * ny), torch.zeros_like(flat), (flat // nx) % ny, flat % nx], 1).int()
    feats = torch.randn(20, c, generator=g)
    out = PointPillarScatter(c, (nx, ny, 1))(feats, coords, batch)
    ref = torch.zeros(batch, c, ny * nx)
    for b in range(batch):  # OpenPCDet's per-frame loop
        m = coords[:, 0] == b
        ref[b][:, (coords[m, 2] * nx + coords[m, 3]).long()] = feats[m].t()
    assert torch.equal(out, ref.view(batch, c, ny, nx))


def test_height_compression_stacks_channels_then_z() -> None:
    feats = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    idx = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]], dtype=torch.int32)  # z = 0 and 1 at (y=1, x=2)
    bev = HeightCompression(4)(spconv.SparseConvTensor(feats, idx, [2, 3, 4], 1))
    assert bev.shape == (1, 4, 3, 4)
    assert bev[0, :, 1, 2].tolist() == [1.0, 2.0, 10.0, 20.0]  # (c0,z0), (c0,z1), (c1,z0), (c1,z1)


def test_bev_backbone_deblock_kinds_and_shapes() -> None:
    neck = BaseBEVBackbone(8, [1, 1, 1], [2, 2, 2], [8, 16, 32], [0.5, 1, 2], [8, 8, 8])
    kinds = [type(d[0]) for d in neck.deblocks]
    assert kinds == [nn.Conv2d, nn.ConvTranspose2d, nn.ConvTranspose2d]
    assert isinstance(neck.blocks[0][0], nn.ZeroPad2d)
    assert neck(torch.randn(1, 8, 32, 32)).shape == (1, 24, 8, 8)
    conv_neck = BaseBEVBackbone(8, [1], [1], [8], [1], [4], use_conv_for_no_stride=True)
    assert isinstance(conv_neck.deblocks[0][0], nn.Conv2d)


def test_center_head_init_and_outputs() -> None:
    head = CenterHead(16, [["a"], ["b", "c"]], 8, 4, 3, with_velocity=False, hm_init_bias=-2.19)
    keys = head.state_dict().keys()
    assert "heads_list.1.hm.2.bias" in keys and "heads_list.1.hm.1.0.weight" in keys
    assert "heads_list.0.vel.2.weight" not in keys
    assert torch.all(head.heads_list[1].hm[-1].bias == -2.19)
    assert torch.all(head.heads_list[0].dim[-1].bias == 0)
    outs = head(torch.randn(2, 16, 6, 6))
    assert [o.hm.shape[1] for o in outs] == [1, 2] and outs[0].vel is None
    assert (outs[0].center.shape[1], outs[0].center_z.shape[1], outs[0].dim.shape[1], outs[0].rot.shape[1]) == (2, 1, 3, 2)


@pytest.mark.parametrize("recipe", ["synth-pillar", "synth-voxel"])
def test_detector_forward_backward_and_taps(recipe: str) -> None:
    cfg = load_recipe(recipe, SMALL).model
    model = build_model(cfg)
    assert next(iter(model.state_dict())) == "global_step"
    voxels, num, coords = random_frame(cfg)
    out = model(voxels, num, coords, 2)
    assert isinstance(out, DetectorOutput)
    h, w = cfg.head_map_size
    assert out.bev.shape == (2, cfg.bev_out_channels, h, w)
    assert len(out.tasks) == len(cfg.head.tasks)
    for task, t in zip(out.tasks, cfg.head.tasks):
        assert task.hm.shape == (2, len(t), h, w) and task.vel.shape == (2, 2, h, w)
    loss = sum(t.hm.mean() + t.center.mean() + t.vel.mean() for t in out.tasks)
    loss.backward()
    first = model.vfe.pfn_layers[0].linear.weight if cfg.vfe.kind == "pillar" else model.backbone_3d.conv_input[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        full = model(voxels, num, coords, 2)
        split = model.forward_head(model.forward_bev(voxels, num, coords, 2))
    torch.testing.assert_close(full.tasks[0].hm, split[0].hm)
