"""A Waymo root converted by `itkd data prepare --dataset waymo`: split -> frame infos -> points.

Layout (written by ``data.waymo_prepare``; the Waymo venv's worker writes each segment folder):

    ROOT/itkd_waymo.json                    {"format", "format_version", "options", "splits": {split: [segment]}}
    ROOT/segments/<segment>/segment.json    the segment's frames: pose, labels, point file (its done marker)
    ROOT/segments/<segment>/NNNN.npy        float32 (N, 5) x, y, z (vehicle frame), raw intensity, elongation

Frame infos have the keys of the nuScenes infos (``infos.frame_info``), so the dataset, GT database,
augmentation and target assigner read both alike: points and boxes are in the vehicle frame, which plays
the keyframe LiDAR frame's part, and there are no sweeps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import numpy as np

from itkd_cli.core.errors import ItkdError

MANIFEST = "itkd_waymo.json"
FORMAT, FORMAT_VERSION = "itkd-waymo", 1
SEGMENT_FORMAT_VERSION = 1  # the worker's segment.json
SEGMENTS = "segments"
KIND = "waymo"  # an info's "kind": its points are a converted Waymo .npy file
TYPE_NAMES = ("Unknown", "Vehicle", "Pedestrian", "Sign", "Cyclist")  # label_pb2.Label.Type order
POINT_COLUMNS = 5  # x, y, z, intensity, elongation


def prepare_hint(root: Union[str, Path]) -> str:
    """The command that (re)creates a converted root."""
    return f"convert the segments with `itkd data prepare --dataset waymo --src TFRECORD_DIR --out {root} --split NAME`"


def tfrecord_files(source: Union[str, Path]) -> list[Path]:
    """A .tfrecord file, or every *.tfrecord in a folder (sorted).

    Raises:
        ItkdError: nothing of that kind there.
    """
    path = Path(source)
    files = sorted(path.glob("*.tfrecord")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        what = "folder holds no .tfrecord file" if path.is_dir() else "not found"
        raise ItkdError(f"{path}: {what}", hint="pass a Waymo .tfrecord segment or a folder of them")
    return files


def is_converted(root: Union[str, Path]) -> bool:
    """Whether ``root`` holds a converted Waymo root (its manifest)."""
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: Union[str, Path]) -> dict[str, Any]:
    """The converted root's manifest.

    Raises:
        ItkdError: missing, unreadable, or written by another itkd version's converter.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ItkdError(f"dataset.root: {root} is not a converted Waymo root (no {MANIFEST})", hint=prepare_hint(root))
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ItkdError(f"{path}: unreadable ({exc})", hint=prepare_hint(root)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ItkdError(f"{path}: not an itkd Waymo manifest", hint=prepare_hint(root))
    if data.get("format_version") != FORMAT_VERSION:
        raise ItkdError(f"{path}: converted by another itkd version (format {data.get('format_version')}, this "
                        f"version reads {FORMAT_VERSION})", hint=f"convert the segments again into a new --out "
                        f"({prepare_hint('NEW_ROOT')})")
    return data


def read_segment(root: Union[str, Path], name: str) -> dict[str, Any]:
    """One converted segment's index (segment.json).

    Raises:
        ItkdError: the segment was never finished (an interrupted conversion) or is unreadable.
    """
    path = Path(root) / SEGMENTS / name / "segment.json"
    if not path.is_file():
        raise ItkdError(f"{path.parent}: segment {name} is not converted (an interrupted `itkd data prepare`?)",
                        hint="run the same `itkd data prepare --dataset waymo ...` again: it resumes")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ItkdError(f"{path}: unreadable ({exc})", hint="delete its folder and run `itkd data prepare` again") from None
    if data.get("format_version") != SEGMENT_FORMAT_VERSION:
        raise ItkdError(f"{path}: converted by another itkd version (segment format {data.get('format_version')})",
                        hint=f"convert again into a new --out ({prepare_hint('NEW_ROOT')})")
    return data


def split_segments(manifest: dict[str, Any], root: Union[str, Path], split: str) -> list[str]:
    """Segment names of a split of a converted root.

    Raises:
        ItkdError: the split was not converted (the message lists those that were).
    """
    splits = manifest.get("splits", {})
    if split not in splits:
        have = ", ".join(sorted(splits)) or "none"
        raise ItkdError(f"split {split!r}: not in the converted Waymo root {root} (it holds: {have})",
                        hint=f"convert that split's segments: `itkd data prepare --dataset waymo --src DIR "
                             f"--out {root} --split {split}`")
    return list(splits[split])


def _frame_info(segment: str, context: str, frame: dict[str, Any]) -> dict[str, Any]:
    """One converted frame as a frame info (keys of ``infos.frame_info``, plus Waymo's labels)."""
    labels = frame["labels"]
    boxes = np.asarray(labels["boxes"], np.float64).reshape(-1, 7)
    speed = np.asarray(labels["speed"], np.float64).reshape(-1, 2)
    token = f"{context}_{int(frame['timestamp'])}"
    names = [TYPE_NAMES[t] if 0 <= t < len(TYPE_NAMES) else TYPE_NAMES[0] for t in labels["types"]]
    return {
        "kind": KIND, "token": token, "lidar_token": token, "context": context,
        "timestamp": int(frame["timestamp"]), "lidar_path": f"{SEGMENTS}/{segment}/{frame['points_file']}",
        "lidar_to_global": np.asarray(frame["pose"], np.float64).reshape(4, 4).tolist(), "sweeps": [],
        # OpenPCDet's box: x, y, z, dx = length, dy = width, dz = height, heading; then the speed.
        "gt_boxes": np.concatenate([boxes, speed], axis=1).tolist(), "gt_names": names,
        "num_lidar_pts": [int(n) for n in labels["num_points"]], "ann_tokens": list(labels["ids"]),
        "difficulty": [int(d) for d in labels["difficulty"]],
    }


def waymo_infos(root: Union[str, Path], split: str) -> list[dict[str, Any]]:
    """Frame infos of a split of a converted root, segments in manifest order, frames in time order.

    Raises:
        ItkdError: not a converted root, unknown split, unfinished segment, or no frame at all.
    """
    manifest = read_manifest(root)
    infos = []
    for name in split_segments(manifest, root, split):
        segment = read_segment(root, name)
        infos += [_frame_info(name, segment["context"], f) for f in segment["frames"]]
    if not infos:
        raise ItkdError(f"split {split!r}: the converted Waymo root {root} holds no frame of it",
                        hint=prepare_hint(root))
    return infos


def read_waymo_points(path: Union[str, Path], token: str = "") -> np.ndarray:
    """A converted frame's points, as the models read them.

    Returns:
        (N, 5) float32 x, y, z, tanh(intensity), elongation (OpenPCDet squashes Waymo's unbounded
        intensity with tanh when it loads a frame).

    Raises:
        ItkdError: missing file, not an (N, 5) float32 array, no points, or NaN/Inf values.
    """
    where = f"{path} (frame {token})" if token else str(path)
    try:
        points = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ItkdError(f"{where}: point file not found", hint=prepare_hint("ROOT")) from None
    except (OSError, ValueError) as exc:
        raise ItkdError(f"{where}: unreadable point file ({exc})", hint="delete its segment folder and run "
                        "`itkd data prepare --dataset waymo ...` again") from None
    if points.ndim != 2 or points.shape[1] != POINT_COLUMNS or points.dtype != np.float32:
        raise ItkdError(f"{where}: expected float32 (N, {POINT_COLUMNS}) points (x, y, z, intensity, elongation), "
                        f"got {points.dtype} {tuple(points.shape)}")
    bad = points.size - int(np.count_nonzero(np.isfinite(points)))
    if bad:
        raise ItkdError(f"{where}: {bad} non-finite values (NaN/Inf) in {len(points)} points; file corrupt",
                        hint="delete its segment folder and run `itkd data prepare --dataset waymo ...` again")
    if len(points) == 0:  # a frame without points is no sample at all
        raise ItkdError(f"{where}: holds no points", hint="delete its segment folder and run "
                        "`itkd data prepare --dataset waymo ...` again")
    out = points.copy()
    out[:, 3] = np.tanh(out[:, 3])
    return out
