"""collate -> Batch and build_loader determinism on the tiny world."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_tiny import make_world, tiny_recipe

from itkd_cli.core.types import Batch
from itkd_cli.data.loader import EpochSampler, build_loader, collate
from itkd_cli.data.dataset import FrameDataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("loader") / "world", frames=3)


def assert_same(a: Batch, b: Batch) -> None:
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        elif isinstance(x, tuple) and x and hasattr(x[0], "heatmap"):
            for tx, ty in zip(x, y):
                for fx, fy in zip(tx, ty):
                    torch.testing.assert_close(fx, fy, rtol=0, atol=0)
        else:
            assert x == y


def test_collate_layout(world):
    recipe = tiny_recipe(world)
    ds = FrameDataset(recipe, "tiny_train", train=False)
    samples = [ds[0], ds[2]]
    batch = collate(samples, recipe)
    v0, v1 = len(samples[0].coords), len(samples[1].coords)
    assert batch.batch_size == 2 and batch.tokens == ("s0", "s2")
    assert batch.voxels.shape == (v0 + v1, 20, 5) and batch.coords.dtype == torch.int32
    assert batch.coords[:v0, 0].eq(0).all() and batch.coords[v0:, 0].eq(1).all()
    assert torch.equal(batch.coords[v0:, 1:], torch.from_numpy(samples[1].coords))
    assert batch.gt_boxes.shape == (2, 2, 9) and batch.gt_labels.tolist() == [[1, 9], [1, 9]]
    h, w = recipe.model.head_map_size
    assert len(batch.targets) == len(recipe.model.head.tasks)
    car = batch.targets[0]
    assert car.heatmap.shape == (2, 1, h, w) and car.ind.dtype == torch.int64 and car.mask.dtype == torch.bool
    assert car.box.shape == (2, 500, 10) and car.mask.sum() == 2


def test_collate_pads_frames_without_boxes(world):
    recipe = tiny_recipe(world, "dataset.class_names=[car]", "model.head.tasks=[[car]]")
    s = FrameDataset(recipe, "tiny_train", train=False)[0]
    empty = s._replace(gt_boxes=np.zeros((0, 9), np.float32), gt_labels=np.zeros(0, np.int64))
    batch = collate([empty, s], recipe)
    assert batch.gt_boxes.shape == (2, 1, 9) and batch.gt_labels.tolist() == [[0], [1]]


def test_epoch_sampler():
    s = EpochSampler(5, shuffle=True, seed=3)
    e0, e1 = list(s), list(s)
    assert [e for e, _ in e0] == [0] * 5 and [e for e, _ in e1] == [1] * 5
    assert sorted(i for _, i in e0) == list(range(5)) and e0 != e1
    assert list(EpochSampler(5, shuffle=True, seed=3)) == e0
    assert [i for _, i in EpochSampler(3, shuffle=False, seed=0)] == [0, 1, 2]


def test_augmentation_depends_on_seed_epoch_index(world):
    ds = FrameDataset(tiny_recipe(world), "tiny_train", train=True)
    a, b, c = ds[(0, 1)], ds[(0, 1)], ds[(1, 1)]
    np.testing.assert_array_equal(a.gt_boxes, b.gt_boxes)
    np.testing.assert_array_equal(a.voxels, b.voxels)
    assert not np.allclose(a.gt_boxes, c.gt_boxes)


def test_loader_same_batches_with_and_without_workers(world):
    runs = []
    for workers in (0, 2):
        recipe = tiny_recipe(world, f"dataset.workers={workers}")
        loader = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=7)
        runs.append([b for _ in range(2) for b in loader])  # two epochs
    assert len(runs[0]) == 4 and all(isinstance(b, Batch) for b in runs[1])
    for a, b in zip(*runs):
        assert_same(a, b)
    assert runs[0][0].tokens != runs[0][2].tokens or not torch.equal(runs[0][0].gt_boxes, runs[0][2].gt_boxes)


@pytest.mark.parametrize("length,world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_epoch_sampler_shares_an_epoch_between_processes(length, world):
    whole = [i for _, i in EpochSampler(length, shuffle=True, seed=5)]
    shares = [list(EpochSampler(length, shuffle=True, seed=5, rank=r, world=world)) for r in range(world)]
    n = -(-length // world)
    assert all(len(s) == n for s in shares)  # equal step counts: DDP's collectives must line up
    padded = (whole * world)[:n * world]  # the permutation, padded with its own head
    for r, share in enumerate(shares):
        assert [i for _, i in share] == padded[r::world] and {e for e, _ in share} == {0}
    assert sorted({i for s in shares for _, i in s}) == list(range(length))  # every frame is seen


def test_epoch_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        EpochSampler(4, shuffle=False, seed=0, rank=2, world=2)
