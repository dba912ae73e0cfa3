"""Batches that mix labeled frames with frames of the unlabeled pool (``dataset.unlabeled``, #41).

The dataset concatenates the training split (indices ``[0, labeled)``) and the pool (``[labeled, labeled +
unlabeled)``). Every batch holds ``n_l`` labeled frames then ``n_u`` pool frames (``batch_shares``). An epoch is
one pass over the labeled split in the permutation ``EpochSampler`` draws for (seed, epoch); the pool frames come
from one endless stream of seeded permutations of the pool (the next permutation when one runs out), epoch ``e``
taking the stretch after epoch ``e - 1``'s, so a large pool is covered across epochs before any frame repeats.
Everything is a function of (seed, epoch): ``fit`` sets ``epoch`` before each pass, and an exact resume replays
the same batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from itkd_cli.core.errors import ItkdError

POOL_STREAM = 0x706F6F6C  # 'pool': keeps the pool's permutations apart from the labeled ones (seed, epoch)


def batch_shares(batch_size: int, ratio: float) -> tuple[int, int]:
    """(labeled, unlabeled) frames per batch: n_u = max(1, round(batch_size * ratio)), n_l = batch_size - n_u.

    ``round`` is Python's (halves to even: 5 frames at ratio 0.9 give 4 unlabeled + 1 labeled).

    Raises:
        ItkdError: the batch leaves no labeled frame (names train.batch_size and the ratio).
    """
    n_u = max(1, round(batch_size * ratio))
    n_l = batch_size - n_u
    if n_l < 1:
        smallest = next((b for b in range(2, 100_000) if b - max(1, round(b * ratio)) >= 1), None)
        raise ItkdError(f"train.batch_size: {batch_size} frames with dataset.unlabeled.ratio {ratio} leave no "
                        f"labeled frame ({n_u} unlabeled per batch)",
                        hint=(f"use train.batch_size >= {smallest} or " if smallest else "use ")
                        + "a smaller dataset.unlabeled.ratio")
    return n_l, n_u


class MixedBatchSampler(Sampler):
    """Yields batches of (epoch, index) pairs: ``n_l`` labeled frames, then ``n_u`` frames of the pool.

    Each pass over it is the next epoch (like ``EpochSampler``); ``epoch`` is the epoch of the next pass. The
    labeled permutation is padded with its own head to whole batches, and the batches to a multiple of
    ``world``; process ``rank`` takes batches ``rank, rank + world, ...``, so every process runs the same number
    of steps (DDP's collectives require it) and together they run the batches of ``world=1``.

    Args:
        labeled: frames of the training split (dataset indices 0 .. labeled - 1).
        unlabeled: frames of the pool (dataset indices labeled .. labeled + unlabeled - 1).
        batch_size: frames per batch (per process). ratio: ``dataset.unlabeled.ratio``.
        shuffle: permute (labeled: per epoch; pool: each pass over it). seed: base seed. start_epoch: first epoch.
        rank: this process's index, world: number of processes.

    Raises:
        ItkdError: the batch cannot hold both kinds of frames (``batch_shares``).
    """

    def __init__(self, labeled: int, unlabeled: int, batch_size: int, ratio: float, shuffle: bool, seed: int,
                 start_epoch: int = 0, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        if labeled < 1 or unlabeled < 1:
            raise ValueError(f"need labeled and unlabeled frames, got {labeled} and {unlabeled}")
        self.n_l, self.n_u = batch_shares(batch_size, ratio)
        self.labeled, self.unlabeled, self.shuffle, self.seed = labeled, unlabeled, shuffle, seed
        self.epoch, self.rank, self.world = start_epoch, rank, world

    def __len__(self) -> int:
        return -(-(-(-self.labeled // self.n_l)) // self.world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.batches(epoch))

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This process's batches of ``epoch`` (no state changes)."""
        total = len(self) * self.world
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch])).permutation(
                self.labeled)
        else:
            order = np.arange(self.labeled)
        labeled = np.resize(order, total * self.n_l)  # resize repeats the head
        pool = self.labeled + self._pool_stream(epoch * total * self.n_u, total * self.n_u)
        return [[(epoch, int(i)) for i in (*labeled[j * self.n_l:(j + 1) * self.n_l],
                                           *pool[j * self.n_u:(j + 1) * self.n_u])]
                for j in range(self.rank, total, self.world)]

    def _pool_stream(self, start: int, count: int) -> np.ndarray:
        """Items ``[start, start + count)`` of the pool stream: permutation k of the pool seeded by (seed, k)."""
        size = self.unlabeled
        first, last = start // size, (start + count - 1) // size
        parts = []
        for k in range(first, last + 1):
            if self.shuffle:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, POOL_STREAM, k]))
                parts.append(rng.permutation(size))
            else:
                parts.append(np.arange(size))
        stream = np.concatenate(parts)
        offset = start - first * size
        return stream[offset:offset + count]
