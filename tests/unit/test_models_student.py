"""Student derivation: width policies, rounding rules, paper parameter counts, builds and forwards, and
channel selection (the student started from the teacher's weights)."""

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


# ------------------------------------------------------------- channel selection (weight surgery)
def test_init_from_teacher_keeps_leading_channels(one_thread):
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.student import channel_select, derive_student

    cfg = load_recipe("synth-pillar", ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]).model
    teacher, student = build_model(cfg), build_model(derive_student(cfg, 0.25, "neck"))
    copied = channel_select(student, teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert copied == len(s_state)  # every student tensor fits inside its teacher tensor
    w_s, w_t = s_state["backbone_2d.blocks.0.1.weight"], t_state["backbone_2d.blocks.0.1.weight"]
    assert w_s.shape[0] < w_t.shape[0]
    assert torch.equal(w_s, w_t[: w_s.shape[0], : w_s.shape[1]])
    assert torch.equal(s_state["vfe.pfn_layers.0.linear.weight"], t_state["vfe.pfn_layers.0.linear.weight"])


def _batch_norms(model):
    import torch

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]


def _kill_channels_beyond(teacher, student) -> None:
    """Zero gamma and beta of every teacher BN channel the student does not keep: those channels output 0."""
    import torch

    s_modules = dict(student.named_modules())
    for name, bn in _batch_norms(teacher):
        keep = s_modules[name].num_features
        with torch.no_grad():
            bn.weight[keep:] = 0.0
            bn.bias[keep:] = 0.0


@pytest.mark.parametrize("policy", ["neck", "full"])
@pytest.mark.parametrize("ratio", [0.5, 0.25])
@pytest.mark.parametrize("recipe", ["synth-pillar", "synth-voxel"])
def test_channel_select_reproduces_a_teacher_whose_extra_channels_are_dead(one_thread, recipe, ratio, policy):
    # Reference: a teacher whose dropped channels output exactly 0 computes the same function as the
    # selected student, if selection keeps the right channels of every concat (neck -> head, PFN layers).
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.student import channel_select, concat_input_index, derive_student

    cfg = load_recipe(recipe, ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]).model
    student_cfg = derive_student(cfg, ratio, policy)
    torch.manual_seed(0)
    teacher, student = build_model(cfg).eval(), build_model(student_cfg).eval()
    for _, bn in _batch_norms(teacher):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)  # non-trivial BN so a wrong channel changes the output
        torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    _kill_channels_beyond(teacher, student)
    assert channel_select(student, teacher, concat_input_index(cfg, student_cfg)) == len(student.state_dict())
    nx, ny, nz = cfg.grid.grid_size
    n = 40
    coords = torch.stack([torch.zeros(n, dtype=torch.long), torch.randint(0, nz, (n,)),
                          torch.randint(0, ny, (n,)), torch.randint(0, nx, (n,))], dim=1).int()
    coords = torch.unique(coords, dim=0)
    voxels = torch.randn(coords.shape[0], cfg.grid.max_points_per_voxel, cfg.num_point_features)
    num_points = torch.full((coords.shape[0],), cfg.grid.max_points_per_voxel, dtype=torch.int32)
    with torch.no_grad():
        out_t, out_s = teacher(voxels, num_points, coords, 1), student(voxels, num_points, coords, 1)
    for task_t, task_s in zip(out_t.tasks, out_s.tasks):
        for name in ("hm", "center", "center_z", "dim", "rot", "vel"):
            assert torch.allclose(getattr(task_t, name), getattr(task_s, name), atol=1e-4), name
    # and the plain leading-channel selection (no concat index) does NOT reproduce it
    channel_select(student, teacher)
    with torch.no_grad():
        assert not torch.allclose(teacher(voxels, num_points, coords, 1).tasks[0].hm,
                                  student(voxels, num_points, coords, 1).tasks[0].hm, atol=1e-4)


@pytest.mark.parametrize("recipe,ratio,policy,layers,first", [
    ("synth-pillar", 1e-9, "neck", 6, "model.backbone_2d.num_filters[0]: 32"),  # every neck layer
    ("synth-pillar", 0.02, "neck", 1, "model.backbone_2d.num_filters[0]: 32"),  # 0.64 channel; 64 -> 1.28 is fine
    ("synth-voxel", 0.05, "full", 4, "model.backbone_3d.filters[0]: 8"),  # 8, 8, 16 of the 3D backbone, head 16
])
def test_a_ratio_asking_for_less_than_one_channel_is_refused_naming_the_layers(recipe, ratio, policy, layers, first):
    with pytest.raises(ItkdError) as err:
        derive_student(load_recipe(recipe).model, ratio, policy)
    msg = str(err.value)
    assert msg.startswith(f"student.ratio: {ratio:g} asks for less than one channel of {layers} layer(s) ({first}")


def test_a_small_ratio_that_still_asks_for_a_channel_builds():
    cfg = load_recipe("synth-pillar").model
    assert derive_student(cfg, 0.1, "neck").backbone_2d.num_filters == [8, 8, 16]  # 3.2, 6.4, 12.8 channels
