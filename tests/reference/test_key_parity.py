"""Built models carry exactly OpenPCDet's / SparseKD's state_dict keys, shapes and parameter counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from itkd_cli.models import build_model
from itkd_cli.recipe import load_recipe

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
KEYS = SHARED / "reference" / "checkpoint-keys"

# recipe -> (reference key list, parameter count stated in the key list / interop.md)
CASES = {
    "centerpoint-pillar-waymo": ("openpcdet_waymo_centerpoint_pillar_1x", 5_224_043),
    "centerpoint-voxel-waymo": ("openpcdet_waymo_centerpoint", 7_758_811),
    "centerpoint-voxel-nuscenes": ("openpcdet_cbgs_voxel0075_res3d_centerpoint", 8_941_590),
    "sparsekd-cp-voxel-s": ("sparsekd_cp-voxel-s", 4_038_203),
    "sparsekd-cp-voxel-xs": ("sparsekd_cp-voxel-xs", 2_823_223),
    "sparsekd-cp-voxel-xxs": ("sparsekd_cp-voxel-xxs", 1_012_643),
}


def read_keys(name: str) -> dict[str, list[int]]:
    """Parse ``key [d0, d1, ...]`` lines (``#`` lines are headers)."""
    path = KEYS / f"{name}.keys.txt"
    if not path.is_file():
        pytest.skip(f"{path} missing (shared reference material not present)")
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            out[key] = list(ast.literal_eval(shape))
    return out


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_keys_shapes_and_params_match_reference(recipe: str) -> None:
    ref_name, ref_params = CASES[recipe]
    ref = read_keys(ref_name)
    model = build_model(load_recipe(recipe).model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ref) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(ref)) == [], "keys our model has that the reference lacks"
    assert {k: v for k, v in ours.items() if v != ref[k]} == {}, "shape mismatches"
    assert list(ours) == list(ref), "key order differs (OpenPCDet order)"
    assert n_params(model) == ref_params


def test_plain_voxel_backbone_matches_without_resnet() -> None:
    ref = read_keys("openpcdet_waymo_centerpoint_without_resnet")
    sets = ["model.backbone_3d.kind=plain", "model.backbone_3d.filters=[16,16,32,64,64]"]
    model = build_model(load_recipe("centerpoint-voxel-waymo", sets).model)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref
    assert n_params(model) == 5_775_803


def test_pillar_nuscenes_param_count() -> None:
    """No released key list: check the count against the Waymo pillar model it differs from.

    Same PFN and neck block widths as Waymo pillar; differences: deblock kernels (Waymo up strides
    1, 2, 4 -> kernels 1, 2, 4; nuScenes 0.5, 1, 2 -> a 2x2 stride-2 Conv2d, then kernels 1, 2) and
    6 task heads with velocity.
    """
    cfg = load_recipe("centerpoint-pillar-nuscenes").model
    assert cfg.head_map_size == (128, 128) and cfg.feature_map_stride == 4
    model = build_model(cfg)
    waymo = 5_224_043
    one_task_head = sum(p.numel() for p in build_model(load_recipe("centerpoint-pillar-waymo").model)
                        .dense_head.heads_list[0].parameters())
    conv3 = lambda c_in, c_out: c_in * c_out * 9 + c_out  # noqa: E731  (3x3 conv with bias)
    branch = lambda out: conv3(64, 64) + 2 * 64 + conv3(64, out)  # noqa: E731  (hidden conv + BN + out conv)
    head = sum(branch(2) + branch(1) + branch(3) + branch(2) + branch(2) + branch(n)
               for n in (1, 2, 2, 1, 2, 2))
    deblocks = lambda ks: sum(c * 128 * k * k for c, k in zip((64, 128, 256), ks))  # noqa: E731
    expected = waymo - one_task_head + head - deblocks((1, 2, 4)) + deblocks((2, 1, 2))
    assert n_params(model) == expected == 5_989_030
