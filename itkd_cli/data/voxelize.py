"""Voxelisation with spconv's PointToVoxel on CPU (pillars: one z cell; voxels: several)."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch

from itkd_cli.recipe.schema import ModelConfig


class Voxels(NamedTuple):
    """One frame's voxels.

    voxels: (V, P, F) float32 point features, zero-padded.
    coords: (V, 3) int32 (z, y, x) cell index.
    num_points: (V,) int32 real points per voxel.
    """

    voxels: np.ndarray
    coords: np.ndarray
    num_points: np.ndarray


class Voxelizer:
    """Wraps ``spconv.pytorch.utils.PointToVoxel``; built lazily so DataLoader workers can pickle it.

    Args:
        model_cfg: grid and num_point_features come from here.
        train: use ``max_voxels_train`` (else ``max_voxels_eval``).
    """

    def __init__(self, model_cfg: ModelConfig, train: bool) -> None:
        grid = model_cfg.grid
        self.vsize = list(grid.voxel_size)
        self.prange = list(grid.point_range)
        self.features = model_cfg.num_point_features
        self.max_points = grid.max_points_per_voxel
        self.max_voxels = grid.max_voxels_train if train else grid.max_voxels_eval
        self._gen = None

    def _generator(self):  # noqa: ANN202 - spconv type
        if self._gen is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # spconv's torch.cuda.amp notices
                from spconv.pytorch.utils import PointToVoxel
            self._gen = PointToVoxel(vsize_xyz=self.vsize, coors_range_xyz=self.prange,
                                     num_point_features=self.features, max_num_voxels=self.max_voxels,
                                     max_num_points_per_voxel=self.max_points)
        return self._gen

    def __call__(self, points: np.ndarray) -> Voxels:
        """Voxelise (N, F) points (N may be 0).

        Returns:
            Voxels with V <= max voxels; points outside the range are ignored.
        """
        if len(points) == 0:
            return Voxels(np.zeros((0, self.max_points, self.features), np.float32),
                          np.zeros((0, 3), np.int32), np.zeros((0,), np.int32))
        pc = torch.from_numpy(np.ascontiguousarray(points[:, : self.features], dtype=np.float32))
        voxels, coords, num = self._generator()(pc)
        return Voxels(voxels.numpy().copy(), coords.numpy().astype(np.int32), num.numpy().astype(np.int32))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_gen"] = None  # rebuilt in each worker
        return state
