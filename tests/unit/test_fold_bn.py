"""BatchNorm folding of the frozen teacher: same outputs as the eval-mode model, original untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from itkd_cli.distill.teacher import FrozenTeacher
from itkd_cli.models import build_model
from itkd_cli.models.fold_bn import fold_batchnorm
from itkd_cli.recipe import load_recipe
from tests.unit.test_models import SMALL, random_frame

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: do not oversubscribe the cores


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so an unfolded BN would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def _outputs(out) -> list[torch.Tensor]:
    return [out.bev] + [t for task in out.tasks for t in task if t is not None]


@pytest.mark.parametrize("recipe", ["synth-pillar", "synth-voxel"])
def test_folded_copy_matches_eval_model_and_leaves_it_untouched(recipe: str) -> None:
    cfg = load_recipe(recipe, SMALL).model
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomise_bn(model)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_dense_bn = sum(isinstance(m, (nn.BatchNorm2d,)) for m in model.modules())
    n_pfn_bn = sum(isinstance(m, nn.BatchNorm1d) for m in model.vfe.modules())
    folded, count = fold_batchnorm(model)
    # every dense BN follows a conv in this architecture; the pillar encoder's BN1d follow its linears
    assert count == n_dense_bn + n_pfn_bn > 0
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert left == 0 and not folded.training and not any(p.requires_grad for p in folded.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_dense_bn
    voxels, num, coords = random_frame(cfg)
    with torch.no_grad():
        want, got = _outputs(model(voxels, num, coords, 2)), _outputs(folded(voxels, num, coords, 2))
    assert len(want) == len(got)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_fold_handles_transposed_convs_and_skips_unpaired_bn() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.BatchNorm2d(4))  # the last BN follows a ReLU: not foldable, must stay
    _randomise_bn(net)
    net.eval()
    folded, count = fold_batchnorm(net)
    assert count == 1 and isinstance(folded[1], nn.Identity) and isinstance(folded[3], nn.BatchNorm2d)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_frozen_teacher_runs_the_folded_copy_with_the_same_outputs() -> None:
    cfg = load_recipe("synth-pillar", SMALL).model
    torch.manual_seed(1)
    raw = build_model(cfg)
    _randomise_bn(raw, seed=1)
    teacher, plain = FrozenTeacher(raw), FrozenTeacher(raw, fold_bn=False)
    assert teacher.folded_bn > 0 and plain.folded_bn == 0 and teacher.model is raw
    voxels, num, coords = random_frame(cfg, seed=3)
    got, want = _outputs(teacher(voxels, num, coords, 2)), _outputs(plain(voxels, num, coords, 2))
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
