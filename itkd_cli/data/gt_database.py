"""Ground-truth database for GT-sampling augmentation: every training object's points, per class.

Stored as one ``.npz`` per split (no pickle): boxes (K, 9), names (K,), offsets (K+1,) into points
(P, F), points relative to their box centre (xyz minus centre; other features as read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import atomic_path
from itkd_cli.data.points import load_frame_points, points_in_boxes
from itkd_cli.recipe.schema import DatasetConfig


def db_path(cache: Path, version: str, split: str) -> Path:
    """<cache_dir>/<version>_<split>_gtdb.npz."""
    return cache / f"{version}_{split}_gtdb.npz"


class GTDatabase:
    """Objects of one split with their points, labels 1-based into ``class_names``.

    Args:
        boxes: (K, 9). names: (K,) class names. offsets: (K+1,). points: (P, F) centre-relative.
        class_names: the recipe's classes; other objects are dropped.
    """

    def __init__(self, boxes: np.ndarray, names: np.ndarray, offsets: np.ndarray, points: np.ndarray,
                 class_names: Sequence[str]) -> None:
        lookup = {n: i + 1 for i, n in enumerate(class_names)}
        keep = np.array([str(n) in lookup for n in names], dtype=bool)
        self.boxes = boxes[keep].astype(np.float64)
        self.labels = np.array([lookup[str(n)] for n in names[keep]], dtype=np.int64)
        self._starts, self._ends = offsets[:-1][keep], offsets[1:][keep]
        self._points = points

    def labels_present(self) -> list[int]:
        """Distinct labels, sorted (fixed order keeps sampling deterministic)."""
        return sorted(set(self.labels.tolist()))

    def indices_of(self, label: int) -> np.ndarray:
        """Object indices of one label."""
        return np.flatnonzero(self.labels == label)

    def object_points(self, i: int) -> np.ndarray:
        """(n, F) points of object i, back at its box centre."""
        pts = self._points[self._starts[i]:self._ends[i]].copy()
        pts[:, :3] += self.boxes[i, :3].astype(pts.dtype)
        return pts

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def load(cls, path: Path, class_names: Sequence[str]) -> "GTDatabase":
        """Read a database file.

        Raises:
            ItkdError: missing or malformed file.
        """
        if not path.is_file():
            raise ItkdError(f"{path}: GT database not found (dataset.augment.gt_sampling is on)",
                            hint="run `itkd data prepare --recipe ...` or set dataset.augment.gt_sampling=false")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["boxes"], z["names"], z["offsets"], z["points"], class_names)
        except (OSError, KeyError, ValueError) as exc:
            raise ItkdError(f"{path}: unreadable GT database ({exc})", hint="re-run `itkd data prepare`") from None


def build_gt_database(cfg: DatasetConfig, infos: list[dict], out: Path,
                      progress: Optional[Callable[[int, int], None]] = None) -> dict[str, int]:
    """Cut every annotated object (with lidar points) of ``infos`` out of its frame and save them.

    Points come from the same loader as training frames (keyframe + sweeps in the keyframe frame).

    Returns:
        Objects stored per class name.
    """
    boxes, names, chunks, offsets = [], [], [], [0]
    for n, info in enumerate(infos):
        keep = [i for i, (name, npts) in enumerate(zip(info["gt_names"], info["num_lidar_pts"]))
                if name in cfg.class_names and npts > 0]
        if keep:
            frame_boxes = np.asarray(info["gt_boxes"], dtype=np.float64)[keep]
            points = load_frame_points(cfg.root, info, cfg.sweeps)
            inside = points_in_boxes(points, frame_boxes)
            for j, box in enumerate(frame_boxes):
                pts = points[inside[:, j]].copy()
                pts[:, :3] -= box[:3].astype(np.float32)
                chunks.append(pts)
                offsets.append(offsets[-1] + len(pts))
                boxes.append(box)
                names.append(info["gt_names"][keep[j]])
        if progress:
            progress(n + 1, len(infos))
    feats = 5  # x, y, z, intensity, time_lag as load_frame_points writes them
    arrays = {
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 9),
        "names": np.asarray(names, dtype=str),
        "offsets": np.asarray(offsets, dtype=np.int64),
        "points": np.concatenate(chunks, axis=0) if chunks else np.zeros((0, feats), np.float32),
    }
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:  # a file handle keeps numpy from appending ".npz" to the tmp name
            np.savez(fh, **arrays)
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
