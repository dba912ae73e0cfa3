"""Tiny pillar / voxel recipes and checkpoints for the export tests.

Verification frames are real synthetic frames: `itkd_cli.data.synth.generate(preset='small')` written into a
temporary folder, read back through our own nuScenes-format pipeline (split synth_val, 3 frames).

Imported by tests/unit/test_export*.py and tests/reference/test_onnx_parity.py; holds no tests itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPLIT = "synth_val"

_DATA = ["dataset.version=v1.0-synth", "dataset.class_names=[car, pedestrian]",
         "model.head.tasks=[[car], [pedestrian]]", "model.post.top_k=100"]
PILLAR = ["model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.32, 0.32, 8.0]", "model.vfe.filters=[16, 16]",
          "model.backbone_2d.layer_nums=[1, 1]", "model.backbone_2d.layer_strides=[2, 2]",
          "model.backbone_2d.num_filters=[16, 32]", "model.backbone_2d.upsample_strides=[1, 2]",
          "model.backbone_2d.num_upsample_filters=[16, 16]", "model.head.shared_conv_channels=16",
          "model.head.head_conv_channels=8"]
VOXEL = ["model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.16, 0.16, 0.2]",
         "model.backbone_3d.filters=[4, 4, 8, 8, 16]", "model.backbone_3d.out_channels=16",
         "model.backbone_2d.layer_nums=[1, 1]", "model.backbone_2d.layer_strides=[1, 2]",
         "model.backbone_2d.num_filters=[16, 32]", "model.backbone_2d.upsample_strides=[1, 2]",
         "model.backbone_2d.num_upsample_filters=[16, 16]", "model.head.shared_conv_channels=16",
         "model.head.head_conv_channels=8"]


def synth_world(root: Path) -> Path:
    """Generate the 'small' synthetic world under ``root`` (about a second; reused when present)."""
    from itkd_cli.data.synth.render import generate

    generate(root, preset="small", seed=0)
    return root


def tiny_recipe(kind: str, tmp: Path):
    """A small pillar ('pillar') or voxel ('voxel') recipe reading a synthetic world under ``tmp``."""
    from itkd_cli.recipe import load_recipe

    base = "synth-pillar" if kind == "pillar" else "centerpoint-voxel-nuscenes"
    sets = [f"dataset.root={synth_world(tmp / 'synth')}", *_DATA,
            *(PILLAR if kind == "pillar" else VOXEL)]
    return load_recipe(base, sets)


def randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics so eval-mode BN is not an identity (a stronger parity test)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def tiny_checkpoint(kind: str, tmp: Path, seed: int = 0) -> Path:
    """Write our checkpoint of a random-weight tiny model (its recipe inside) and return its path."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = tiny_recipe(kind, tmp)
    torch.manual_seed(seed)
    model = build_model(recipe.model)
    randomize_bn(model, seed)
    return save_checkpoint(tmp / f"{kind}.pth", model, recipe, "teacher")
