"""Complexity counting against hand-computed MACs and brute-force sparse index pairs; `itkd info`."""

from __future__ import annotations

import itertools
import json

import torch
from torch import nn
from typer.testing import CliRunner

from itkd_cli.cli.main import app
from itkd_cli.models import build_model
from itkd_cli.models.complexity import STAGES, build_frame, count_macs, count_params, profile
from itkd_cli.recipe import load_recipe

# +-5.12 m fits both embedded grids (0.64 m pillars, 0.16 m voxels) and all their strides
SMALL = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]


def test_dense_macs_hand_values() -> None:
    cfg = load_recipe("synth-pillar", SMALL).model
    model = build_model(cfg)
    frame = build_frame(cfg, 3000)
    macs = count_macs(model, frame)
    assert macs["backbone_3d"] == 0 and macs["map_to_bev_module"] == 0
    nx, ny, _ = cfg.grid.grid_size
    # First neck conv: 3x3 stride 2 on the padded (ny, nx) map, 64 -> 32 channels, + its BN.
    h, w = ny // 2, nx // 2
    c_in, c0 = cfg.bev_in_channels, cfg.backbone_2d.num_filters[0]
    first = h * w * c0 * c_in * 9 + h * w * c0
    seen = {}
    conv = model.backbone_2d.blocks[0][1]
    conv.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    count_macs(model, frame)
    assert seen["shape"] == (1, c0, h, w)
    # PFN: V x P points through Linear(11 -> 32) + BN, then Linear(64 -> 64) + BN.
    v, p = frame.voxels.shape[:2]
    pfn = v * p * (11 * 32 + 32) + v * p * (64 * 64 + 64)
    assert macs["vfe"] == pfn
    assert macs["backbone_2d"] > first


def _neighbours(sites: set, z: int, y: int, x: int, stride: int = 1, pad: int = 0) -> int:
    """Active inputs in the 3x3x3 window of output (z, y, x) (input = out * stride - pad + offset)."""
    return sum((z * stride - pad + dz, y * stride - pad + dy, x * stride - pad + dx) in sites
               for dz, dy, dx in itertools.product(range(3), repeat=3))


def test_sparse_macs_equal_brute_force_pairs() -> None:
    cfg = load_recipe("synth-voxel", SMALL).model
    model = build_model(cfg)
    frame = build_frame(cfg, 2000)
    got = {}
    subm, down = model.backbone_3d.conv_input[0], model.backbone_3d.conv2[0][0]
    from itkd_cli.models.complexity import _sparse_macs

    subm.register_forward_hook(lambda m, i, o: got.update(subm=_sparse_macs(m, o), sites=o.indices[:, 1:].tolist()))
    down.register_forward_hook(lambda m, i, o: got.update(down=_sparse_macs(m, o), out=o.indices[:, 1:].tolist(),
                                                          inp=i[0].indices[:, 1:].tolist()))
    count_macs(model, frame)
    sites = {tuple(c) for c in frame.coords[:, 1:].tolist()}
    # Submanifold: outputs at the input sites, window centred (pad 1).
    brute = sum(_neighbours(sites, z, y, x, 1, 1) for z, y, x in sites)
    assert got["subm"] == brute * cfg.num_point_features * cfg.backbone_3d.filters[0]
    # Strided k3 s2 p1 conv: every output's window over its input sites.
    inp = {tuple(c) for c in got["inp"]}
    brute = sum(_neighbours(inp, z, y, x, 2, 1) for z, y, x in got["out"])
    assert got["down"] == brute * cfg.backbone_3d.filters[1] * cfg.backbone_3d.filters[2]


def test_conv_transpose_macs() -> None:
    from itkd_cli.models.complexity import _dense_macs

    m = nn.ConvTranspose2d(4, 3, 2, stride=2, bias=False)
    x = torch.randn(1, 4, 5, 6)
    assert _dense_macs(m, x, m(x)) == 5 * 6 * 4 * 3 * 4


def test_profile_and_params() -> None:
    cfg = load_recipe("synth-pillar", SMALL).model
    model = build_model(cfg)
    params = count_params(model)
    assert set(params) == set(STAGES) and sum(params.values()) == sum(p.numel() for p in model.parameters())
    out = profile(model, build_frame(cfg, 2000), repeats=1, warmup=0)
    assert out["latency_ms"] > 0 and out["frame"]["voxels"] > 0


def test_info_cli_json_with_student() -> None:
    res = CliRunner().invoke(app, ["info", "--recipe", "synth-pillar", "--set", SMALL[0], "--ratio", "0.25",
                                   "--policy", "full", "--points", "2000", "--repeats", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["student"]["params_total"] < data["teacher"]["params_total"]
    assert data["student_config"]["policy"] == "full"


def test_info_cli_user_errors() -> None:
    res = CliRunner().invoke(app, ["info", "--recipe", "synth-pillar", "--ratio", "2"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["info"])
    assert res.exit_code == 2
