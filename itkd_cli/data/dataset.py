"""The training/evaluation dataset: frame infos -> points (+ sweeps) -> augmentation -> voxels -> targets.

Infos come from a nuScenes-format dataset (real nuScenes or the synthetic world) or a converted Waymo root
(``data.waymo``); both have the same keys, so everything after them is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import numpy as np
from torch.utils.data import Dataset, get_worker_info

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.augment import augment, range_filter
from itkd_cli.data.cache import cache_dir, check_token, frame_tokens, info_index, load_infos
from itkd_cli.data.gt_database import GTDatabase, db_path
from itkd_cli.data.points import load_frame_points
from itkd_cli.data.targets import FrameTargets, assign_targets
from itkd_cli.data.voxelize import Voxelizer
from itkd_cli.recipe.schema import Recipe


class FrameSample(NamedTuple):
    """One processed frame (numpy), as the dataset returns it; ``collate`` turns a list into a Batch.

    voxels: (V, P, F) float32. coords: (V, 3) int32 (z, y, x). num_points: (V,) int32.
    gt_boxes: (K, 9) float32. gt_labels: (K,) int64 1-based. targets: one FrameTargets per task.
    token: sample token. labeled: False for a frame of the unlabeled pool (no boxes, empty targets).
    """

    voxels: np.ndarray
    coords: np.ndarray
    num_points: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    targets: tuple[FrameTargets, ...]
    token: str
    labeled: bool = True


def split_infos(recipe: Recipe, split: str, train: bool) -> list[dict]:
    """The frame infos a dataset of ``split`` reads: every ``dataset.sampled_interval``-th frame, class-balanced
    (CBGS, ``dataset.balanced_resampling``, drawn once from train.seed so a resume rebuilds the list) when training.
    """
    cfg = recipe.dataset
    infos = load_infos(cfg, split)
    if train and cfg.balanced_resampling:
        from itkd_cli.data.balance import balanced_indices

        infos = [infos[i] for i in balanced_indices(infos, cfg.class_names, recipe.train.seed, split)]
    return infos


def frame_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Augmentation randomness of one frame: a function of (seed, epoch, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]))


class FrameDataset(Dataset):
    """Frames of one split of a nuScenes-format dataset or of a converted Waymo root (``dataset.kind``).

    Items are ``FrameSample``; an index may also be an ``(epoch, index)`` pair (see ``EpochSampler``)
    so augmentation stays a function of (train.seed, epoch, index) with persistent workers.

    Args:
        recipe: dataset, grid and head settings.
        split: split name (built-in devkit name or a key of <root>/<version>/splits.json; Waymo: a converted split).
        train: apply augmentation and class-balanced resampling (``dataset.balanced_resampling``), drop boxes
            without lidar points, use max_voxels_train.
        infos: read these frame infos instead of the split's (no sampled interval, no resampling), e.g. the
            training split's (``split_infos``) followed by the unlabeled pool's (``unlabeled.load_pool``) as one
            ``sweep_pool.InfoChain``; an info with ``"labeled": False`` gives a sample without boxes that GT
            sampling never pastes into. ``split`` then only names the GT database and the errors.
    """

    def __init__(self, recipe: Recipe, split: str, train: bool, *, infos: Optional[Sequence[dict]] = None) -> None:
        self.recipe, self.split, self.train = recipe, split, train
        cfg = recipe.dataset
        # a pool's infos stay as given (a SweepTable builds each frame's info when it is read)
        self.infos = split_infos(recipe, split, train) if infos is None else infos
        self._index = info_index(self.infos)
        self.voxelizer = Voxelizer(recipe.model, train)
        self.epoch = 0
        self.db: Optional[GTDatabase] = None
        if train and cfg.augment.gt_sampling:
            self.db = GTDatabase.load(db_path(cache_dir(cfg), cfg.version, split), cfg.class_names)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def tokens(self) -> list[str]:
        """Sample tokens of the split, in index order."""
        return frame_tokens(self.infos)

    def lidar_to_global(self, token: str) -> np.ndarray:
        """(4, 4) keyframe LiDAR sensor -> global transform of a sample (for writing results)."""
        return np.asarray(self.infos[check_token(self._index, token, self.split)]["lidar_to_global"])

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of the recipe's classes, before augmentation.

        Returns:
            boxes (K, 9) float64, labels (K,) int64 1-based. Training drops boxes with no lidar points.
        """
        info, names = self.infos[index], self.recipe.dataset.class_names
        keep = [i for i, (n, p) in enumerate(zip(info["gt_names"], info["num_lidar_pts"]))
                if n in names and (p > 0 or not self.train)]
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 9)[keep]
        labels = np.asarray([names.index(info["gt_names"][i]) + 1 for i in keep], dtype=np.int64)
        return boxes, labels

    def points(self, index: int) -> np.ndarray:
        """(N, 5) keyframe + sweep points in the keyframe LiDAR frame, before augmentation."""
        cfg = self.recipe.dataset
        return load_frame_points(cfg.root, self.infos[index], cfg.sweeps)

    def __getitem__(self, item: int | tuple[int, int]) -> FrameSample:
        try:
            return self._sample(item)
        except ItkdError as exc:  # in a DataLoader worker the hint would be lost on the way to the user
            raise exc.for_worker() if get_worker_info() is not None else exc

    def _sample(self, item: int | tuple[int, int]) -> FrameSample:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        points, (boxes, labels) = self.points(index), self.annotations(index)
        labeled = bool(self.infos[index].get("labeled", True))
        if self.train:
            rng = frame_rng(self.recipe.train.seed, epoch, index)
            # No GT sampling into an unlabeled frame: its collision test needs the frame's boxes, and there are
            # none, so pasted objects would land inside real, unannotated ones.
            db = self.db if labeled else None
            points, boxes, labels = augment(points, boxes, labels, self.recipe.dataset.augment, rng, db)
        points, boxes, labels = range_filter(points, boxes, labels, self.recipe.model.grid.point_range)
        vox = self.voxelizer(points)
        targets = assign_targets(boxes, labels, self.recipe)
        return FrameSample(vox.voxels, vox.coords, vox.num_points, boxes.astype(np.float32), labels,
                           targets, self.infos[index]["token"], labeled)
