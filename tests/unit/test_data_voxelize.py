"""spconv PointToVoxel wrapper against a numpy reference, for pillars and 3D voxels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from itkd_cli.data.voxelize import Voxelizer
from itkd_cli.recipe.load import load_recipe

PILLAR = ["model.grid.point_range=[0, 0, -2, 6.4, 6.4, 2]", "model.grid.voxel_size=[0.4, 0.4, 4]",
          "model.grid.max_points_per_voxel=4"]


def reference(points: np.ndarray, lo, vsize, grid) -> dict[tuple, np.ndarray]:
    """(z, y, x) cell -> points in it, in input order."""
    cells = np.floor((points[:, :3] - lo) / vsize).astype(int)
    inside = np.all((cells >= 0) & (cells < grid), axis=1)
    out: dict[tuple, list] = {}
    for p, c in zip(points[inside], cells[inside]):
        out.setdefault((c[2], c[1], c[0]), []).append(p)
    return {k: np.array(v) for k, v in out.items()}


def check(recipe, points):
    grid = recipe.model.grid
    vox = Voxelizer(recipe.model, train=True)(points)
    ref = reference(points, np.array(grid.point_range[:3]), np.array(grid.voxel_size), np.array(grid.grid_size))
    assert vox.coords.dtype == np.int32 and vox.num_points.dtype == np.int32
    assert len(vox.coords) == len(ref)
    for v, c, n in zip(vox.voxels, vox.coords, vox.num_points):
        pts = ref[tuple(c.tolist())]
        assert n == min(len(pts), grid.max_points_per_voxel)
        np.testing.assert_allclose(v[:n], pts[:n], rtol=1e-6)
        assert np.all(v[n:] == 0)
    return vox


def test_pillars_match_reference():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform([-1, -1, -3], [7.4, 7.4, 3], size=(3000, 3)),
                          rng.random((3000, 2))], axis=1).astype(np.float32)
    vox = check(load_recipe("synth-pillar", PILLAR), pts)
    assert np.all(vox.coords[:, 0] == 0) and vox.voxels.shape[1:] == (4, 5)


def test_voxels_match_reference():
    r = load_recipe("synth-pillar", [
        "model.grid.point_range=[0, 0, -2, 12.8, 12.8, 2]", "model.grid.voxel_size=[0.2, 0.2, 0.1]",
        "model.grid.max_points_per_voxel=3", "model.vfe={kind: mean}", "model.backbone_3d={}"])
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform([0, 0, -2], [12.8, 12.8, 2], size=(4000, 3)),
                          rng.random((4000, 2))], axis=1).astype(np.float32)
    vox = check(r, pts)
    assert vox.coords[:, 0].max() > 5  # several z cells


def test_max_voxels_and_empty_and_pickle():
    r = load_recipe("synth-pillar", [*PILLAR, "model.grid.max_voxels_train=10"])
    vz = Voxelizer(r.model, train=True)
    pts = np.random.default_rng(2).uniform(0, 6, size=(500, 5)).astype(np.float32)
    assert len(vz(pts).coords) == 10
    empty = vz(np.zeros((0, 5), np.float32))
    assert empty.voxels.shape == (0, 4, 5) and empty.coords.shape == (0, 3)
    clone = pickle.loads(pickle.dumps(vz))  # DataLoader workers receive a copy
    np.testing.assert_array_equal(clone(pts).coords, vz(pts).coords)


@pytest.mark.parametrize("train,expected", [(True, 7), (False, 9)])
def test_train_and_eval_limits(train, expected):
    r = load_recipe("synth-pillar", [*PILLAR, "model.grid.max_voxels_train=7", "model.grid.max_voxels_eval=9"])
    pts = np.random.default_rng(3).uniform(0, 6, size=(500, 5)).astype(np.float32)
    assert len(Voxelizer(r.model, train)(pts).coords) == expected
