"""Voxel feature encoders (OpenPCDet ``vfe``): MeanVFE for voxels, PillarVFE (PFN) for pillars."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _point_mask(num_points: Tensor, max_points: int) -> Tensor:
    """(V, P) bool: which of the P slots of each voxel hold a real point."""
    slots = torch.arange(max_points, device=num_points.device)
    return slots.unsqueeze(0) < num_points.unsqueeze(1)


class MeanVFE(nn.Module):
    """Average the points of each voxel (no parameters)."""

    def __init__(self, num_point_features: int) -> None:
        super().__init__()
        self.out_channels = num_point_features

    def forward(self, voxels: Tensor, num_points: Tensor, coords: Tensor) -> Tensor:
        """Mean point per voxel.

        Args:
            voxels: (V, P, F) zero-padded point features.
            num_points: (V,) real points per voxel.
            coords: (V, 4) [b, z, y, x] (unused; same signature as PillarVFE).

        Returns:
            (V, F) mean features.
        """
        count = num_points.clamp(min=1).to(voxels.dtype).unsqueeze(1)
        return voxels.sum(dim=1) / count


class PFNLayer(nn.Module):
    """Linear (no bias) + BatchNorm1d + ReLU; non-last layers concat the pillar max to every point."""

    BN_FOLD_PAIRS = (("linear", "norm"),)  # for models.fold_bn: the norm is a per-channel affine of the linear

    def __init__(self, in_channels: int, out_channels: int, last_layer: bool) -> None:
        super().__init__()
        self.last_layer = last_layer
        # OpenPCDet halves non-last layers because the concat with the max doubles them back.
        width = out_channels if last_layer else out_channels // 2
        self.linear = nn.Linear(in_channels, width, bias=False)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """(V, P, C_in) -> (V, 1, C_out) if last layer else (V, P, C_out)."""
        x = self.linear(x)
        x = torch.relu(self.norm(x.permute(0, 2, 1)).permute(0, 2, 1))
        x_max = x.max(dim=1, keepdim=True).values
        if self.last_layer:
            return x_max
        return torch.cat([x, x_max.expand(-1, x.shape[1], -1)], dim=2)


class PillarVFE(nn.Module):
    """PointPillars encoder: F point features + 3 cluster offsets + 3 pillar-centre offsets."""

    def __init__(self, num_point_features: int, filters: list[int],
                 voxel_size: tuple[float, float, float], point_range: tuple[float, ...]) -> None:
        super().__init__()
        widths = [num_point_features + 6, *filters]
        self.pfn_layers = nn.ModuleList(
            PFNLayer(widths[i], widths[i + 1], last_layer=i == len(filters) - 1) for i in range(len(filters)))
        self.out_channels = filters[-1]
        self.voxel_size = tuple(float(v) for v in voxel_size)
        # Centre of cell 0 along x, y, z.
        self.offset = tuple(float(voxel_size[i]) / 2 + float(point_range[i]) for i in range(3))

    def forward(self, voxels: Tensor, num_points: Tensor, coords: Tensor) -> Tensor:
        """Encode pillars.

        Args:
            voxels: (V, P, F) zero-padded point features (x, y, z first).
            num_points: (V,) real points per pillar.
            coords: (V, 4) int [b, z, y, x].

        Returns:
            (V, C) pillar features, C = filters[-1].
        """
        xyz = voxels[:, :, :3]
        count = num_points.to(voxels.dtype).clamp(min=1).view(-1, 1, 1)
        f_cluster = xyz - xyz.sum(dim=1, keepdim=True) / count
        # coords columns 3, 2, 1 are the x, y, z cell indices.
        cell = coords[:, [3, 2, 1]].to(voxels.dtype)
        size = torch.tensor(self.voxel_size, dtype=voxels.dtype, device=voxels.device)
        offset = torch.tensor(self.offset, dtype=voxels.dtype, device=voxels.device)
        f_center = xyz - (cell * size + offset).unsqueeze(1)
        features = torch.cat([voxels, f_cluster, f_center], dim=-1)
        mask = _point_mask(num_points, voxels.shape[1]).unsqueeze(-1).to(voxels.dtype)
        features = features * mask
        for pfn in self.pfn_layers:
            features = pfn(features)
        return features.squeeze(1)
