"""Teacher training pieces on a shrunken synth-pillar model with hand-made batches (no dataset)."""

from __future__ import annotations

import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Batch, TaskTargets
from itkd_cli.recipe.load import load_recipe
from itkd_cli.train.loop import fit
from itkd_cli.train.train import check_dataset, detector_step, train

SMALL = [
    "model.grid.point_range=[-2.56, -2.56, -5.0, 2.56, 2.56, 3.0]", "model.grid.voxel_size=[0.32, 0.32, 8.0]",
    "dataset.class_names=[car, pedestrian]", "model.head.tasks=[[car], [pedestrian]]",
    "model.vfe.filters=[8]",
    "model.backbone_2d.layer_nums=[1, 1]", "model.backbone_2d.layer_strides=[2, 2]",
    "model.backbone_2d.num_filters=[8, 8]", "model.backbone_2d.upsample_strides=[1, 2]",
    "model.backbone_2d.num_upsample_filters=[8, 8]",
    "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8",
    "train.epochs=2", "train.batch_size=2", "train.log_every=1",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: do not oversubscribe the cores


def _recipe(*extra: str):
    return load_recipe("synth-pillar", [*SMALL, *extra])


def _batch(recipe, seed: int, b: int = 2, voxels_per_frame: int = 8) -> Batch:
    """A random but well-formed Batch: points in distinct pillars, one object per task and frame."""
    g = torch.Generator().manual_seed(seed)
    m = recipe.model
    nx, ny, _ = m.grid.grid_size
    h, w = m.head_map_size
    p, f = m.grid.max_points_per_voxel, m.num_point_features
    coords = []
    for i in range(b):
        cells = torch.randperm(nx * ny, generator=g)[:voxels_per_frame]
        coords.append(torch.stack([torch.full_like(cells, i), torch.zeros_like(cells), cells // nx, cells % nx], 1))
    coords = torch.cat(coords).int()
    num = torch.randint(1, p + 1, (len(coords),), generator=g).int()
    vox = torch.randn(len(coords), p, f, generator=g) * (torch.arange(p)[None, :, None] < num[:, None, None])
    targets = []
    for task in m.head.tasks:
        heat = torch.rand(b, len(task), h, w, generator=g) * 0.5
        ind = torch.randint(0, h * w, (b, 3), generator=g)
        for i in range(b):
            heat[i, 0].view(-1)[ind[i, 0]] = 1.0
        mask = torch.tensor([[True, False, False]] * b)
        targets.append(TaskTargets(heat, ind, mask, torch.randn(b, 3, m.head.code_size, generator=g),
                                   torch.zeros(b, 3, dtype=torch.long)))
    return Batch(vox, num, coords, b, torch.zeros(b, 1, 9), torch.zeros(b, 1, dtype=torch.long), tuple(targets),
                 tuple(f"t{seed}_{i}" for i in range(b)))


def _fit(recipe, out, resume=None):
    from itkd_cli.models.build import build_model

    torch.manual_seed(0)
    model = build_model(recipe.model)
    batches = [_batch(recipe, s) for s in range(2)]
    fit(model, detector_step(model, recipe), batches, recipe.train, out, recipe.model_dump(mode="json"),
        "teacher", resume=resume, quiet=True)
    return model


def test_detector_step_trains_and_resumes_exactly(tmp_path):
    recipe = _recipe()
    straight = _fit(recipe, tmp_path / "a")
    ckpt = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["recipe"]["model"]["vfe"]["filters"] == [8]
    assert int(ckpt["model_state"]["global_step"]) == 4
    _fit(_recipe("train.max_steps=3"), tmp_path / "b")
    resumed = _fit(recipe, tmp_path / "b", resume=tmp_path / "b" / "last.pth")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_loss_decreases_on_a_repeated_batch(tmp_path):
    from itkd_cli.models.build import build_model

    recipe = _recipe("train.epochs=1", "train.lr=0.01")
    torch.manual_seed(0)
    model = build_model(recipe.model)
    batch = _batch(recipe, 0)
    step = detector_step(model, recipe)
    first = float(step(batch, 0.0)[0].detach())
    fit(model, step, [batch] * 4, recipe.train, tmp_path, {}, "teacher", quiet=True)
    model.train()
    assert float(step(batch, 0.0)[0].detach()) < first


def test_missing_dataset_is_one_line_error_with_synth_hint(tmp_path):
    recipe = _recipe(f"dataset.root={tmp_path / 'nowhere'}")
    with pytest.raises(ItkdError) as err:
        check_dataset(recipe)
    assert "not found" in str(err.value) and "itkd data synth --out" in err.value.hint
    assert "\n" not in str(err.value)
    with pytest.raises(ItkdError, match="pick one"):
        train(recipe, tmp_path / "run", resume=tmp_path, init_from=tmp_path / "x.pth")


def test_resume_with_other_architecture_lists_keys(tmp_path):
    _fit(_recipe("train.max_steps=1"), tmp_path)
    wider = _recipe("model.head.shared_conv_channels=16")
    with pytest.raises(ItkdError, match="shape .*dense_head.shared_conv"):
        _fit(wider, tmp_path, resume=tmp_path / "last.pth")
