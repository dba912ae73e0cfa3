"""Batches mixing the training split with the unlabeled pool: MixedBatchSampler (composition, seeds, epochs, ranks,
exact resume through `fit`), FrameDataset over given infos, collate's `labeled`, build_loader(unlabeled=True)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_tiny import make_world, tiny_recipe
from torch import nn
from torch.utils.data import DataLoader, Dataset

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.dataset import FrameDataset, split_infos
from itkd_cli.data.loader import EpochSampler, MixedBatchSampler, build_loader, collate
from itkd_cli.data.mixed_sampler import batch_shares
from itkd_cli.data.sweep_pool import InfoChain
from itkd_cli.data.unlabeled import load_pool
from itkd_cli.recipe.schema import TrainConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("mixed") / "world", frames=3)


def sweeps_recipe(world, *overrides: str):
    return tiny_recipe(world, "dataset.unlabeled={source: sweeps, ratio: 0.5}", *overrides)


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("batch, ratio, shares", [(2, 0.25, (1, 1)), (4, 0.5, (2, 2)), (8, 0.25, (6, 2)),
                                                   (4, 0.1, (3, 1)), (10, 0.7, (3, 7)), (5, 0.9, (1, 4))])
def test_batch_shares(batch, ratio, shares):
    assert batch_shares(batch, ratio) == shares


@pytest.mark.parametrize("batch, ratio, smallest", [(1, 0.5, 2), (3, 0.9, 5)])
def test_a_batch_without_a_labeled_frame_is_refused(batch, ratio, smallest):
    with pytest.raises(ItkdError, match=rf"train.batch_size: {batch} frames with dataset.unlabeled.ratio {ratio} "
                                        "leave no labeled frame") as err:
        MixedBatchSampler(10, 5, batch, ratio, shuffle=True, seed=0)
    assert f"train.batch_size >= {smallest}" in err.value.hint


def test_every_batch_holds_its_shares_and_an_epoch_is_one_pass_over_the_split():
    s = MixedBatchSampler(10, 7, 4, 0.25, shuffle=True, seed=3)  # 3 labeled + 1 unlabeled a batch
    batches = list(s)
    assert len(batches) == len(s) == 4 and s.epoch == 1
    for b in batches:
        assert len(b) == 4 and {e for e, _ in b} == {0}
        assert all(i < 10 for _, i in b[:3]) and 10 <= b[3][1] < 17
    labeled = [i for b in batches for _, i in b[:3]]
    order = [i for _, i in EpochSampler(10, shuffle=True, seed=3)]
    assert labeled == (order + order)[:12]  # EpochSampler's permutation of (seed, epoch), padded with its head
    unshuffled = MixedBatchSampler(5, 2, 3, 0.3, shuffle=False, seed=0)  # 2 + 1
    assert [[i for _, i in b] for b in unshuffled] == [[0, 1, 5], [2, 3, 6], [4, 0, 5]]


def test_order_is_a_function_of_seed_and_epoch():
    a, b = MixedBatchSampler(9, 20, 4, 0.5, True, seed=1), MixedBatchSampler(9, 20, 4, 0.5, True, seed=1)
    first, second = list(a), list(a)
    assert first == list(b) and second == list(b)
    assert first != second and {e for bt in second for e, _ in bt} == {1}
    resumed = MixedBatchSampler(9, 20, 4, 0.5, True, seed=1)
    resumed.epoch = 1  # what `fit` does on a resume
    assert list(resumed) == second
    assert list(MixedBatchSampler(9, 20, 4, 0.5, True, seed=2)) != first


def test_the_pool_stream_covers_the_pool_before_repeating():
    s = MixedBatchSampler(6, 10, 4, 0.5, True, seed=0)  # 3 batches x 2 pool frames = 6 a epoch
    drawn = [i - 6 for _ in range(5) for b in s for _, i in b[2:]]  # 30 draws = 3 passes over the pool
    for k in range(3):
        assert sorted(drawn[10 * k:10 * k + 10]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # each pass in its own permutation
    small = MixedBatchSampler(8, 3, 4, 0.5, True, seed=0)  # a pool smaller than an epoch's draws: it cycles
    pool = [i - 8 for b in small for _, i in b[2:]]
    assert len(pool) == 8 and sorted(pool[:3]) == sorted(pool[3:6]) == [0, 1, 2]


@pytest.mark.parametrize("labeled, world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_processes_share_the_batches(labeled, world):
    whole = MixedBatchSampler(labeled, 5, 3, 0.3, True, seed=4)  # 2 + 1
    shares = [MixedBatchSampler(labeled, 5, 3, 0.3, True, seed=4, rank=r, world=world) for r in range(world)]
    n = -(-(-(-labeled // 2)) // world)
    assert all(len(s) == n for s in shares)  # the same number of steps on every process
    got = [list(s) for s in shares]
    assert all(len(g) == n for g in got)
    # process r runs global batches r, r + world, ...: together the batches of one process, then padding
    together = [got[j % world][j // world] for j in range(n * world)]
    assert together[:len(whole)] == whole.batches(0)
    assert {i for b in together for _, i in b[:2]} == set(range(labeled))  # every labeled frame is seen
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        MixedBatchSampler(4, 4, 2, 0.5, True, 0, rank=2, world=2)


# --------------------------------------------------------------------------------------- exact resume
class Items(Dataset):
    """(epoch, index) items as the float row [epoch, index, 1, -1]: the batch records what the sampler chose."""

    def __getitem__(self, item):
        return torch.tensor([float(item[0]), float(item[1]), 1.0, -1.0])

    def __len__(self) -> int:
        return 15


def _fit(out, max_steps=0, resume=None):
    from itkd_cli.train.loop import fit

    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    seen = []

    def step(batch, progress):
        seen.append(batch[:, :2].long().tolist())
        return model(batch).pow(2).mean(), {}

    loader = DataLoader(Items(), batch_sampler=MixedBatchSampler(9, 6, 4, 0.5, True, seed=7))
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, seed=7, log_every=1, amp=False, max_steps=max_steps or None)
    fit(model, step, loader, cfg, out, {}, "student", resume=resume, quiet=True)
    return model, seen


def test_exact_resume_through_fit_replays_the_mixed_batches(tmp_path):
    straight, all_batches = _fit(tmp_path / "a")
    assert len(all_batches) == 15 and [b[0][0] for b in all_batches[::5]] == [0, 1, 2]  # 5 batches an epoch
    _, first = _fit(tmp_path / "b", max_steps=7)  # stops mid-epoch 1
    resumed, rest = _fit(tmp_path / "b", resume=tmp_path / "b" / "last.pth")
    assert first + rest == all_batches
    assert all(torch.equal(x, y) for x, y in zip(straight.state_dict().values(), resumed.state_dict().values()))


# -------------------------------------------------------------------------------- dataset and collate
def test_pool_frames_are_samples_without_boxes(world):
    recipe = sweeps_recipe(world)
    labeled, pool = split_infos(recipe, "tiny_train", True), load_pool(recipe)
    ds = FrameDataset(recipe, "tiny_train", train=True, infos=InfoChain(labeled, pool))
    assert len(ds) == 6 and ds.tokens[3:] == ["sd_sweep0", "sd_sweep1", "sd_sweep2"]
    a, b, c = ds[(0, 4)], ds[(0, 4)], ds[(1, 4)]
    assert not a.labeled and a.gt_boxes.shape == (0, 9) and len(a.voxels) > 0
    assert all(not t[2].any() and not t[0].any() for t in a.targets)  # no object slot, empty heatmaps
    np.testing.assert_array_equal(a.voxels, b.voxels)  # augmented as a function of (seed, epoch, index)
    assert a.voxels.shape != c.voxels.shape or not np.array_equal(a.voxels, c.voxels)
    assert ds[(0, 1)].labeled and len(ds[(0, 1)].gt_boxes) == 2
    batch = collate([ds[(0, 1)], a], recipe)
    assert batch.labeled.dtype == torch.bool and batch.labeled.tolist() == [True, False]
    assert batch.gt_labels[1].eq(0).all() and batch.tokens == ("s1", "sd_sweep1")
    assert collate([ds[(0, 0)], ds[(0, 1)]], recipe).labeled is None  # all labeled: as before the pool


def test_gt_sampling_never_pastes_into_pool_frames(world, tmp_path):
    """Pasting needs the frame's boxes to avoid real objects; a pool frame has none, so nothing is pasted."""
    from itkd_cli.data.gt_database import build_gt_database, db_path

    cache = tmp_path / "cache"
    plain = sweeps_recipe(world, f"dataset.cache_dir={cache}")
    build_gt_database(plain.dataset, split_infos(plain, "tiny_train", True), db_path(cache, plain.dataset.version,
                                                                                      "tiny_train"))
    pasting = sweeps_recipe(world, f"dataset.cache_dir={cache}", "dataset.augment.gt_sampling=true")
    infos = InfoChain(split_infos(plain, "tiny_train", True), load_pool(plain))
    with_db = FrameDataset(pasting, "tiny_train", train=True, infos=infos)
    without = FrameDataset(plain, "tiny_train", train=True, infos=infos)
    assert with_db.db is not None and len(with_db.db) > 0
    for index in (3, 5):
        a, b = with_db[(2, index)], without[(2, index)]
        assert len(a.gt_boxes) == 0
        np.testing.assert_array_equal(a.voxels, b.voxels)


# ---------------------------------------------------------------------------------------------- loader
def test_build_loader_mixes_the_pool_into_every_batch(world):
    recipe = sweeps_recipe(world)
    loader = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=5, unlabeled=True)
    assert isinstance(loader.batch_sampler, MixedBatchSampler) and len(loader) == 3  # 3 frames, 1 labeled a batch
    epoch0, epoch1 = list(loader), list(loader)
    for batch in epoch0 + epoch1:
        assert batch.labeled.tolist() == [True, False] and batch.tokens[1].startswith("sd_sweep")
    assert sorted(b.tokens[0] for b in epoch0) == ["s0", "s1", "s2"]
    assert sorted(b.tokens[1] for b in epoch0 + epoch1) == sorted(["sd_sweep0", "sd_sweep1", "sd_sweep2"] * 2)
    again = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=5, unlabeled=True)
    for a, b in zip(epoch0, again):
        assert a.tokens == b.tokens and torch.equal(a.voxels, b.voxels)
    given = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=5, unlabeled=True,
                         pool=load_pool(recipe)[1:2])  # the caller's pool, loaded once
    assert given.dataset.tokens == ["s0", "s1", "s2", "sd_sweep1"] and {b.tokens[1] for b in given} == {"sd_sweep1"}


def test_build_loader_without_the_pool_is_todays_loader(world):
    for recipe, unlabeled in ((sweeps_recipe(world), False), (tiny_recipe(world), True)):
        loader = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=5, unlabeled=unlabeled)
        assert isinstance(loader.sampler, EpochSampler) and len(loader.dataset) == 3
        assert all(b.labeled is None for b in loader)


def test_build_loader_refuses_a_batch_of_one(world):
    with pytest.raises(ItkdError, match="train.batch_size: 1 frames with dataset.unlabeled.ratio 0.5"):
        build_loader(sweeps_recipe(world), "tiny_train", train=True, batch_size=1, shuffle=True, seed=0,
                     unlabeled=True)
