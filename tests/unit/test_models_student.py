"""Student derivation: width policies, rounding rules, paper parameter counts, builds and forwards."""

from __future__ import annotations

import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.models import build_model, derive_student
from itkd_cli.models.student import scale_width
from itkd_cli.recipe import load_recipe

# +-5.12 m fits both embedded grids (0.64 m pillars, 0.16 m voxels) and all their strides
SMALL = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]
ONE_TASK = ["model.head.tasks=[[car, truck, construction_vehicle, bus, trailer, barrier, motorcycle, bicycle, "
            "pedestrian, traffic_cone]]"]


def n_params(cfg) -> int:
    return sum(p.numel() for p in build_model(cfg).parameters())


def test_scale_width_rounding() -> None:
    assert scale_width(64, 0.25) == 16
    assert scale_width(64, 0.3) == 16  # 19.2 -> nearest multiple of 8
    assert scale_width(128, 0.3) == 40  # 38.4 -> 40
    assert scale_width(16, 0.25) == 8  # at least 8
    assert scale_width(12, 0.3) == 4  # not a multiple of 8: nearest int
    assert scale_width(3, 0.1) == 1  # at least 1
    assert scale_width(8, 1.0) == 8 and scale_width(12, 1.0) == 12  # never wider


def test_paper_waymo_pillar_students() -> None:
    """itKD paper: 1/2 and 1/4 students of the Waymo pillar teacher have 1.52 M and 0.56 M params."""
    teacher = load_recipe("centerpoint-pillar-waymo").model
    half, quarter = derive_student(teacher, 0.5, "neck"), derive_student(teacher, 0.25, "neck")
    assert quarter.backbone_2d.num_filters == [16, 32, 64]
    assert quarter.backbone_2d.num_upsample_filters == [32, 32, 32] and quarter.bev_out_channels == 96
    assert round(n_params(half) / 1e6, 2) == 1.52
    assert round(n_params(quarter) / 1e6, 2) == 0.56


def test_neck_policy_keeps_everything_but_the_neck() -> None:
    teacher = load_recipe("centerpoint-voxel-nuscenes").model
    student = derive_student(teacher, 0.25, "neck")
    t, s = teacher.model_dump(), student.model_dump()
    for key in ("grid", "vfe", "backbone_3d", "head", "post", "num_point_features"):
        assert t[key] == s[key]
    assert s["backbone_2d"]["num_filters"] == [32, 64]
    assert s["backbone_2d"]["layer_strides"] == t["backbone_2d"]["layer_strides"]
    assert student.head_map_size == teacher.head_map_size


def test_full_policy_scales_encoder_and_head() -> None:
    teacher = load_recipe("centerpoint-voxel-waymo").model
    s = derive_student(teacher, 0.5, "full")
    assert s.backbone_3d.filters == (8, 8, 16, 32, 64) and s.backbone_3d.out_channels == 64
    assert s.bev_in_channels == 128  # HeightCompression follows (64 x 2 z cells)
    assert (s.head.shared_conv_channels, s.head.head_conv_channels) == (32, 32)
    assert s.grid == teacher.grid and s.head_map_size == teacher.head_map_size
    p = derive_student(load_recipe("centerpoint-pillar-waymo").model, 0.25, "full")
    assert p.vfe.filters == [16, 16]


def test_bad_ratio_and_policy_are_user_errors() -> None:
    teacher = load_recipe("synth-pillar").model
    with pytest.raises(ItkdError, match="student.ratio"):
        derive_student(teacher, 1.5, "neck")
    with pytest.raises(ItkdError, match="student.policy"):
        derive_student(teacher, 0.5, "everything")


@pytest.mark.parametrize("tasks", ["one", "six"])
@pytest.mark.parametrize("policy", ["neck", "full"])
@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("recipe", ["synth-pillar", "synth-voxel"])
def test_student_builds_and_forwards(recipe: str, ratio: float, policy: str, tasks: str) -> None:
    teacher = load_recipe(recipe, SMALL + (ONE_TASK if tasks == "one" else [])).model
    student = derive_student(teacher, ratio, policy)
    assert n_params(student) < n_params(teacher)
    model = build_model(student).eval()
    nx, ny, nz = student.grid.grid_size
    coords = torch.tensor([[0, nz // 2, 3, 5], [0, nz // 2, ny - 2, nx - 3], [0, 0, ny // 2, nx // 2]], dtype=torch.int32)
    voxels = torch.zeros(3, student.grid.max_points_per_voxel, student.num_point_features)
    with torch.no_grad():
        out = model(voxels, torch.ones(3, dtype=torch.int32), coords, 1)
    assert out.bev.shape == (1, student.bev_out_channels, *teacher.head_map_size)
    assert len(out.tasks) == len(teacher.head.tasks)
