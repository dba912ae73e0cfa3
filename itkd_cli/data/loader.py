"""Collate FrameSamples into a Batch and build deterministic DataLoaders (with ``unlabeled``: batches that mix
the training split with the unlabeled pool of ``dataset.unlabeled``, ``MixedBatchSampler``)."""

from __future__ import annotations

import functools
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from itkd_cli.core.types import Batch, TaskTargets
from itkd_cli.data.dataset import FrameSample, FrameDataset, split_infos
from itkd_cli.data.mixed_sampler import MixedBatchSampler, batch_shares
from itkd_cli.data.sweep_pool import InfoChain
from itkd_cli.data.unlabeled import load_pool
from itkd_cli.recipe.schema import Recipe

__all__ = ["collate", "EpochSampler", "MixedBatchSampler", "build_loader"]


def collate(samples: Sequence[FrameSample], recipe: Recipe) -> Batch:
    """Stack frames into a Batch.

    Args:
        samples: B processed frames.
        recipe: gives the point feature count for empty batches.

    Returns:
        Batch with coords (V, 4) int32 (b, z, y, x), gt_boxes (B, N, 9) and gt_labels (B, N) zero-padded
        to the largest frame (N >= 1), targets stacked per task; labeled (B,) bool when any frame is of the
        unlabeled pool, else None.
    """
    feats, max_pts = recipe.model.num_point_features, recipe.model.grid.max_points_per_voxel
    coords = [np.concatenate([np.full((len(s.coords), 1), b, np.int32), s.coords], axis=1)
              for b, s in enumerate(samples)]
    n = max([1, *(len(s.gt_boxes) for s in samples)])
    boxes = np.zeros((len(samples), n, 9), np.float32)
    labels = np.zeros((len(samples), n), np.int64)
    for b, s in enumerate(samples):
        boxes[b, :len(s.gt_boxes)] = s.gt_boxes
        labels[b, :len(s.gt_labels)] = s.gt_labels
    targets = tuple(
        TaskTargets(*(torch.from_numpy(np.stack([s.targets[t][f] for s in samples])) for f in range(5)))
        for t in range(len(recipe.model.head.tasks)))
    voxels = np.concatenate([s.voxels for s in samples]) if samples else np.zeros((0, max_pts, feats), np.float32)
    labeled: Optional[torch.Tensor] = None
    if not all(s.labeled for s in samples):
        labeled = torch.tensor([s.labeled for s in samples], dtype=torch.bool)
    return Batch(
        voxels=torch.from_numpy(voxels),
        num_points=torch.from_numpy(np.concatenate([s.num_points for s in samples]).astype(np.int32)),
        coords=torch.from_numpy(np.concatenate(coords).astype(np.int32)),
        batch_size=len(samples),
        gt_boxes=torch.from_numpy(boxes),
        gt_labels=torch.from_numpy(labels),
        targets=targets,
        tokens=tuple(s.token for s in samples),
        labeled=labeled,
    )


class EpochSampler(Sampler):
    """Yields (epoch, index) pairs; each pass over it is the next epoch.

    The order is a permutation seeded by (seed, epoch) when shuffling. Passing the epoch with the index
    keeps augmentation a function of (seed, epoch, index) even in persistent workers.

    With ``world`` > 1 (data-parallel training) every process draws the same permutation and takes
    every world-th index from position ``rank``; the permutation is padded with its own head to a
    multiple of ``world`` (as torch's DistributedSampler does) so that every process runs the same
    number of steps, which DDP's collectives require.

    Args:
        length: dataset size. shuffle: permute each epoch. seed: base seed. start_epoch: first epoch.
        rank: this process's index, world: number of processes (1: the whole permutation).
    """

    def __init__(self, length: int, shuffle: bool, seed: int, start_epoch: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.length, self.shuffle, self.seed, self.epoch = length, shuffle, seed, start_epoch
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch]))
            order = rng.permutation(self.length)
        else:
            order = np.arange(self.length)
        if self.world > 1:
            order = np.resize(order, len(self) * self.world)[self.rank::self.world]  # resize repeats the head
        return iter([(epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return -(-self.length // self.world)


def _seed_worker(worker_id: int, seed: int) -> None:
    # Augmentation draws from per-frame generators; this only pins any library-level randomness.
    np.random.seed((seed + worker_id) & 0xFFFFFFFF)
    torch.manual_seed(seed + worker_id)
    torch.set_num_threads(1)  # workers share the machine's few cores


def build_loader(recipe: Recipe, split: str, train: bool, batch_size: int, shuffle: bool, seed: int,
                 start_epoch: int = 0, rank: int = 0, world: int = 1, unlabeled: bool = False,
                 pool: Optional[Sequence[dict]] = None) -> DataLoader:
    """A DataLoader of Batch over one split, or (``unlabeled`` and ``dataset.unlabeled`` set) over the split
    mixed with the unlabeled pool.

    Args:
        recipe: dataset/model settings; workers = recipe.dataset.workers (persistent when > 0).
        split: split name. train: augment + training filters. batch_size: frames per batch (per process).
        shuffle: permute per epoch. seed: order and worker seed. start_epoch: epoch of the first pass.
        rank, world: this process's share of each epoch in data-parallel training (see EpochSampler).
        unlabeled: mix ``dataset.unlabeled``'s pool into every batch (``MixedBatchSampler``: share
            ``dataset.unlabeled.ratio`` of each batch; an epoch is one pass over ``split``). Ignored when
            ``dataset.unlabeled`` is not set.
        pool: with ``unlabeled``, the pool's infos when the caller already has them from ``unlabeled.load_pool``
            (else loaded and checked here).

    Returns:
        DataLoader whose items are Batch; its ``dataset`` is the FrameDataset (mixed: the split's frames, then
        the pool's, ``labeled`` False); mixed, its ``batch_sampler`` is the MixedBatchSampler.

    Raises:
        ItkdError: a bad pool (``unlabeled.load_pool``), or a batch too small to hold both kinds of frames.
    """
    pool_cfg = recipe.dataset.unlabeled
    workers = recipe.dataset.workers
    common = dict(collate_fn=functools.partial(collate, recipe=recipe), num_workers=workers,
                  persistent_workers=workers > 0,
                  worker_init_fn=functools.partial(_seed_worker, seed=seed) if workers > 0 else None)
    if unlabeled and pool_cfg is not None:
        batch_shares(batch_size, pool_cfg.ratio)  # a batch too small fails before any frame is read
        labeled = split_infos(recipe, split, train)
        pool = load_pool(recipe) if pool is None else pool
        dataset = FrameDataset(recipe, split, train, infos=InfoChain(labeled, pool))
        sampler = MixedBatchSampler(len(labeled), len(pool), batch_size, pool_cfg.ratio, shuffle, seed, start_epoch,
                                    rank, world)
        return DataLoader(dataset, batch_sampler=sampler, **common)
    dataset = FrameDataset(recipe, split, train)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle, seed, start_epoch, rank, world),
        drop_last=False,
        **common,
    )
