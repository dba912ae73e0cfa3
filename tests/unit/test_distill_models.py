"""itKD on the real CenterPoint networks of a shrunk synth-pillar grid: widths line up end to end."""

from __future__ import annotations

import pytest
import torch

from itkd_cli.core.types import TaskTargets
from itkd_cli.distill import build_kd, freeze_teacher
from itkd_cli.models.build import build_model
from itkd_cli.models.student import channel_select, concat_input_index, derive_student
from itkd_cli.recipe.load import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores

SMALL_GRID = "model.grid.point_range=[-10.24, -10.24, -5.0, 10.24, 10.24, 3.0]"


def _pillars(cfg, batch: int, per_frame: int = 40):
    """Random pillars (voxels, num_points, coords [b, z, y, x]) on the model's grid."""
    nx, ny, _ = cfg.grid.grid_size
    p, f = cfg.grid.max_points_per_voxel, cfg.num_point_features
    coords = []
    for b in range(batch):
        cells = torch.randperm(nx * ny)[:per_frame]
        coords.append(torch.stack([torch.full_like(cells, b), torch.zeros_like(cells), cells // nx, cells % nx], 1))
    coords = torch.cat(coords).int()
    num = torch.randint(1, p + 1, (coords.shape[0],)).int()
    vox = torch.randn(coords.shape[0], p, f) * (torch.arange(p)[None, :, None] < num[:, None, None])
    return vox, num, coords, batch


@pytest.mark.parametrize("policy,ratio", [("neck", 0.25), ("full", 0.5)])
def test_itkd_runs_on_real_networks(policy, ratio):
    recipe = load_recipe("synth-pillar", [SMALL_GRID, "model.grid.voxel_size=[0.32, 0.32, 8.0]"])
    t_cfg = recipe.model
    s_cfg = derive_student(t_cfg, ratio, policy)
    torch.manual_seed(0)
    raw_teacher = build_model(t_cfg)
    before = {k: v.clone() for k, v in raw_teacher.state_dict().items()}
    teacher, student = freeze_teacher(raw_teacher), build_model(s_cfg).train()
    kd = build_kd(recipe.distill, t_cfg, s_cfg)
    inputs = _pillars(t_cfg, batch=2)
    t_out, s_out = teacher(*inputs), student(*inputs)
    h, w = t_cfg.head_map_size
    assert s_out.bev.shape[-2:] == t_out.bev.shape[-2:] == (h, w)
    targets = tuple(TaskTargets(torch.zeros(2, len(task), h, w), torch.randint(0, h * w, (2, 4)),
                                torch.tensor([[True, True, False, False]] * 2), torch.zeros(2, 4, 10),
                                torch.zeros(2, 4, dtype=torch.long)) for task in t_cfg.head.tasks)
    terms = kd(s_out, t_out, targets)
    assert all(torch.isfinite(v) for v in terms) and terms.cr > 0 and terms.it > 0 and terms.head > 0
    opt = torch.optim.AdamW([*student.parameters(), *kd.parameters()], lr=1e-3, weight_decay=0.01)
    terms.total.backward()
    opt.step()
    assert all(p.grad is None for p in raw_teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    after = raw_teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_default_form_adapter_is_the_identity_for_a_copy_of_the_teacher():
    """Ratio 1.0 + channel selection copies the teacher: the default form's A maps M_s onto M_t, so L_cr
    starts at 0; the paper form's random A does not."""
    sets = [SMALL_GRID, "model.grid.voxel_size=[0.32, 0.32, 8.0]", "distill.itkd.w_head=0"]
    recipe = load_recipe("synth-pillar", sets)
    t_cfg = recipe.model
    s_cfg = derive_student(t_cfg, 1.0, "neck")
    torch.manual_seed(0)
    raw_teacher, student = build_model(t_cfg), build_model(s_cfg)
    channel_select(student, raw_teacher, concat_input_index(t_cfg, s_cfg))
    teacher, student = freeze_teacher(raw_teacher), student.eval()
    inputs = _pillars(t_cfg, batch=2)
    with torch.no_grad():
        t_out, s_out = teacher(*inputs), student(*inputs)
        h, w = t_cfg.head_map_size
        targets = tuple(TaskTargets(torch.zeros(2, len(task), h, w), torch.randint(0, h * w, (2, 4)),
                                    torch.ones(2, 4, dtype=torch.bool), torch.zeros(2, 4, 10),
                                    torch.zeros(2, 4, dtype=torch.long)) for task in t_cfg.head.tasks)
        kd = build_kd(recipe.distill, t_cfg, s_cfg)
        torch.testing.assert_close(kd.adapter(s_out.bev), t_out.bev, atol=1e-4, rtol=1e-4)
        copy_cr = kd(s_out, t_out, targets).cr.item()
        assert copy_cr < 1e-4
        random = build_kd(load_recipe("synth-pillar", [*sets, "distill.itkd.form=paper"]).distill, t_cfg, s_cfg)
        assert random(s_out, t_out, targets).cr.item() > 100 * max(copy_cr, 1e-6)
