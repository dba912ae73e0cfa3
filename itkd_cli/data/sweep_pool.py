"""The non-key LiDAR sweeps of a nuScenes split as one table: the ``sweeps`` source of ``dataset.unlabeled``.

Sweeps are 9 in 10 of nuScenes' LiDAR frames (about 270,000 in v1.0-trainval), and each one read as a frame
stacks its own previous sweeps. One info dict per sweep, each listing its previous sweeps with their transforms,
took 5.3 KB of JSON a frame (about 1.4 GB for trainval) and several GB of Python objects, copied into every
DataLoader worker as they were touched. Here every LiDAR sample_data is stored once (token, path, timestamp,
sensor -> global pose) in numpy arrays, and each pool frame keeps the rows of its previous sweeps; the info dict
of a frame, with the keys of ``infos.frame_info``, is built when the frame is read.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union, overload

import numpy as np

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import atomic_write
from itkd_cli.data.infos import LIDAR, get_record, previous_sweeps, sensor_to_global, split_scenes, unannotated

ARRAYS = ("tokens", "paths", "timestamps", "poses", "frames", "previous")


class SweepTable(Sequence):
    """The pool frames of a split's sweeps; ``table[i]`` is frame i's info dict (``"labeled": False``).

    Args:
        tokens, paths: (N,) bytes, every LiDAR sample_data the pool reads (its frames and their previous sweeps).
        timestamps: (N,) int64 microseconds. poses: (N, 4, 4) float64 sensor -> global.
        frames: (M,) int row of each pool frame. previous: (M, K) int rows of its previous sweeps, newest first,
            -1 past the last (K = dataset.sweeps - 1).
    """

    def __init__(self, tokens: np.ndarray, paths: np.ndarray, timestamps: np.ndarray, poses: np.ndarray,
                 frames: np.ndarray, previous: np.ndarray) -> None:
        self.tokens_all, self.paths, self.timestamps, self.poses = tokens, paths, timestamps, poses
        self.frames, self.previous = frames, previous

    def __len__(self) -> int:
        return len(self.frames)

    @overload
    def __getitem__(self, index: int) -> dict: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[dict, list[dict]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        key = int(self.frames[index])
        lidar_to_global = self.poses[key]
        global_to_key = np.linalg.inv(lidar_to_global)
        sweeps = [{"path": self.paths[j].decode(), "token": self.tokens_all[j].decode(),
                   "time_lag": 1e-6 * int(self.timestamps[key] - self.timestamps[j]),
                   "to_key": (global_to_key @ self.poses[j]).tolist()}
                  for j in (int(r) for r in self.previous[index]) if j >= 0]
        record = {"token": self.tokens_all[key].decode(), "filename": self.paths[key].decode(),
                  "timestamp": int(self.timestamps[key])}
        return unannotated(record, lidar_to_global, sweeps)

    @property
    def tokens(self) -> list[str]:
        """sample_data tokens of the pool frames, in order (without building their infos)."""
        return [t.decode() for t in self.tokens_all[self.frames]]

    def save(self, path: Path, meta: dict) -> Path:
        """Atomically write the table and ``meta`` (the cache key) to an .npz file."""
        arrays = {name: getattr(self, "tokens_all" if name == "tokens" else name) for name in ARRAYS}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, meta: dict) -> Optional["SweepTable"]:
        """The table stored at ``path`` when its meta equals ``meta``, else None (absent or stale).

        Raises:
            ItkdError: the file is unreadable.
        """
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if json.loads(str(data["meta"])) != meta:
                    return None
                return cls(*(data[name] for name in ARRAYS))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ItkdError(f"{path}: unreadable sweeps cache ({exc})", hint="delete it; it is rebuilt") from None


def build_sweep_table(nusc: Any, split: str, sweeps: int, max_lag: float) -> SweepTable:
    """Every non-key LIDAR_TOP sample_data of the scenes of ``split``, as a frame of its own.

    Each is its own LiDAR frame and pose; its previous sweeps (keyframes included) within ``max_lag``, up to
    ``sweeps - 1``, follow the ``prev`` links as for a keyframe (``infos.frame_info``). Scenes in the devkit's
    order, sweeps in time order.

    Raises:
        ItkdError: unknown split, dangling tokens.
    """
    wanted = set(split_scenes(nusc.dataroot, nusc.version, split))
    scene_of = {}  # sample token -> rank of its scene among the split's
    for rank, scene in enumerate(s for s in nusc.scene if s["name"] in wanted):
        token = scene["first_sample_token"]
        while token:
            scene_of[token] = rank
            token = get_record(nusc, "sample", token, f"scene {scene['name']}")["next"]
    found = sorted((scene_of[sd["sample_token"]], sd["timestamp"], sd["token"]) for sd in nusc.sample_data
                   if not sd["is_key_frame"] and sd.get("channel") == LIDAR and sd["sample_token"] in scene_of)
    rows: dict[str, int] = {}
    records: list[dict] = []
    poses: list[np.ndarray] = []

    def row(sd: dict) -> int:
        if sd["token"] not in rows:
            rows[sd["token"]] = len(records)
            records.append(sd)
            poses.append(sensor_to_global(nusc, sd))
        return rows[sd["token"]]

    count = max(sweeps - 1, 0)
    frames, previous = [], np.full((len(found), count), -1, dtype=np.int64)
    for i, (_, _, token) in enumerate(found):
        key = get_record(nusc, "sample_data", token, f"split {split}")
        frames.append(row(key))
        for k, (sd, _) in enumerate(previous_sweeps(nusc, key, count, max_lag)):
            previous[i, k] = row(sd)
    return SweepTable(np.array([r["token"].encode() for r in records], dtype=bytes),
                      np.array([r["filename"].encode() for r in records], dtype=bytes),
                      np.array([r["timestamp"] for r in records], dtype=np.int64),
                      np.array(poses, dtype=np.float64).reshape(-1, 4, 4),
                      np.array(frames, dtype=np.int64), previous)


def frame_tokens(infos: Sequence[dict]) -> list[str]:
    """Sample tokens in dataset order (a ``SweepTable`` or ``InfoChain`` names its frames without building them)."""
    tokens = getattr(infos, "tokens", None)
    return list(tokens) if tokens is not None else [info["token"] for info in infos]


class InfoChain(Sequence):
    """Two sequences of frame infos read as one (the training split's, then the pool's), neither copied."""

    def __init__(self, first: Sequence, second: Sequence) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("InfoChain: index frames one at a time")
        index = index + len(self) if index < 0 else index
        if not 0 <= index < len(self):
            raise IndexError(index)
        n = len(self.first)
        return self.first[index] if index < n else self.second[index - n]

    @property
    def tokens(self) -> list[str]:
        """Sample tokens of both, in order."""
        return frame_tokens(self.first) + frame_tokens(self.second)
