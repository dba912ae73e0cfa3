"""BEV projections (OpenPCDet ``map_to_bev``): HeightCompression (voxel) and PointPillarScatter (pillar)."""

from __future__ import annotations

import spconv.pytorch as spconv
from torch import Tensor, nn


class HeightCompression(nn.Module):
    """Dense the sparse conv_out tensor and stack its z cells into channels (C major, then z)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: spconv.SparseConvTensor) -> Tensor:
        """Sparse (N, C) at shape (D, H, W) -> dense BEV (B, C * D, H, W)."""
        dense = x.dense()
        b, c, d, h, w = dense.shape
        return dense.reshape(b, c * d, h, w)


class PointPillarScatter(nn.Module):
    """Scatter pillar features onto a zero BEV canvas by flat index (export-friendly, no Python loop)."""

    def __init__(self, out_channels: int, grid_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.nx, self.ny, nz = grid_size
        if nz != 1:
            raise ValueError(f"PointPillarScatter needs one z cell, got {nz}")

    def forward(self, pillar_features: Tensor, coords: Tensor, batch_size: int) -> Tensor:
        """Place pillars on the canvas.

        Args:
            pillar_features: (V, C).
            coords: (V, 4) int [b, z, y, x].
            batch_size: frames B.

        Returns:
            (B, C, ny, nx) BEV map, zeros where no pillar.
        """
        c = pillar_features.shape[1]
        coords = coords.long()
        flat = (coords[:, 0] * self.ny + coords[:, 2]) * self.nx + coords[:, 3]
        canvas = pillar_features.new_zeros(batch_size * self.ny * self.nx, c)
        canvas = canvas.index_put((flat,), pillar_features)
        return canvas.view(batch_size, self.ny, self.nx, c).permute(0, 3, 1, 2).contiguous()
