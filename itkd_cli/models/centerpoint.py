"""CenterPoint detector composed from its stages; state_dict keys follow OpenPCDet."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput


class CenterPoint(nn.Module):
    """vfe -> [backbone_3d] -> map_to_bev -> backbone_2d (neck) -> dense_head.

    Pillar models pass ``backbone_3d=None``; the scatter then takes the pillar features directly.
    Split entry points let export and distillation tap the BEV maps:
    ``encode`` (BEV input of the neck), ``forward_bev`` (neck output M), ``forward_head`` (task maps).
    """

    def __init__(self, vfe: nn.Module, backbone_3d: Optional[nn.Module], map_to_bev: nn.Module,
                 backbone_2d: nn.Module, dense_head: nn.Module) -> None:
        super().__init__()
        self.vfe = vfe
        self.backbone_3d = backbone_3d
        self.map_to_bev_module = map_to_bev
        self.backbone_2d = backbone_2d
        self.dense_head = dense_head
        # OpenPCDet checkpoints carry the optimiser step count as the first state_dict entry.
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))

    def encode(self, voxels: Tensor, num_points: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """Voxels -> dense BEV map entering the neck.

        Args:
            voxels: (V, P, F) zero-padded point features.
            num_points: (V,) real points per voxel.
            coords: (V, 4) int32 [b, z, y, x].
            batch_size: frames B.

        Returns:
            (B, bev_in_channels, ny / s, nx / s) with s = 1 (pillar) or 8 (voxel).
        """
        feats = self.vfe(voxels, num_points, coords)
        if self.backbone_3d is None:
            return self.map_to_bev_module(feats, coords, batch_size)
        return self.map_to_bev_module(self.backbone_3d(feats, coords, batch_size))

    def forward_bev(self, voxels: Tensor, num_points: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """Voxels -> neck output M (B, bev_out_channels, H, W) (the feature-distillation tap)."""
        return self.backbone_2d(self.encode(voxels, num_points, coords, batch_size))

    def forward_head(self, bev: Tensor) -> tuple[TaskHeadOutput, ...]:
        """Neck output M (B, C, H, W) -> one TaskHeadOutput per task."""
        return self.dense_head(bev)

    def forward(self, voxels: Tensor, num_points: Tensor, coords: Tensor, batch_size: int) -> DetectorOutput:
        """Full forward: DetectorOutput(bev=M, tasks=head maps)."""
        bev = self.forward_bev(voxels, num_points, coords, batch_size)
        return DetectorOutput(bev=bev, tasks=self.forward_head(bev))
