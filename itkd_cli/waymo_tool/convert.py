"""`convert`: one segment's TFRecord -> a point file per frame and segment.json (OpenPCDet-style).

    SEGMENT_DIR/.convert.json   {"options", "source_bytes"}: what the NNNN.npy files there were made from
    SEGMENT_DIR/NNNN.npy        float32 (N, 5) x, y, z (vehicle frame), intensity (raw), elongation
    SEGMENT_DIR/segment.json    the frames' index, written last: the done marker

Every file is written atomically, so a killed conversion leaves whole point files only; run again with
the same options and source, it reuses them and converts the rest.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, BinaryIO, Callable, Optional

import numpy as np

from common import fail, write_atomically
from frames import read_frames
from points import frame_points

FORMAT = "itkd-waymo-segment"
FORMAT_VERSION = 1
STATE = ".convert.json"
DONE = "segment.json"
POINT_FILE = re.compile(r"^\d{4,}\.npy(\.tmp)?$")
RESUME = "; the frames written so far are kept: run the same command again to resume"


def cmd_convert(src: str, out_dir: str, lidars: str, returns: int) -> None:
    """Convert every frame of ``src`` into ``out_dir``; prints `frame I` per frame and `done N`
    (or `skipped` when out_dir already holds this conversion)."""
    if not os.path.isfile(src):
        fail(f"{src}: no such TFRecord file")
    options = {"lidars": lidars, "returns": returns}
    source_bytes = os.path.getsize(src)
    done = _read_json(os.path.join(out_dir, DONE))
    if (done.get("format_version") == FORMAT_VERSION and done.get("source_bytes") == source_bytes
            and done.get("options") == options):
        print("skipped", flush=True)
        return
    resume = _prepare(out_dir, {"options": options, "source_bytes": source_bytes})
    frames, context = [], None
    for index, frame in enumerate(read_frames(src, on_loss=f"; the frames before it are kept, no {DONE} written")):
        if context is None:
            context = frame.context.name
        elif frame.context.name != context:
            fail(f"{src}: frame {index} belongs to segment {frame.context.name!r}, frame 0 to {context!r} "
                 "(one segment per TFRecord)")
        name = f"{index:04d}.npy"
        path = os.path.join(out_dir, name)
        count = _whole_point_file(path) if resume else None
        if count is None:
            points = frame_points(frame, top_only=lidars == "top", returns=returns)
            _write(path, lambda fh, pts=points: np.save(fh, pts))
            count = len(points)
        frames.append(_frame_entry(index, frame, name, count))
        print(f"frame {index}", flush=True)
    if not frames:
        fail(f"{src}: holds no Waymo frames")
    _write_json(os.path.join(out_dir, DONE), {
        "format": FORMAT, "format_version": FORMAT_VERSION, "source": os.path.abspath(src),
        "source_bytes": source_bytes, "options": options, "context": context, "frames": frames})
    print(f"done {len(frames)}", flush=True)


def _prepare(out_dir: str, state: dict[str, Any]) -> bool:
    """Make out_dir ready; True when its point files were made from ``state`` (reuse them).

    A stale segment.json goes first. Other point files are deleted before the new state is recorded, so
    that a kill at any moment never leaves point files under a state they were not made from.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        fail(f"{out_dir}: exists and is not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(os.path.join(out_dir, DONE)):
            os.remove(os.path.join(out_dir, DONE))
        if _read_json(os.path.join(out_dir, STATE)) == state:
            return True
        if os.path.exists(os.path.join(out_dir, STATE)):
            os.remove(os.path.join(out_dir, STATE))
        for name in os.listdir(out_dir):
            if POINT_FILE.match(name):
                os.remove(os.path.join(out_dir, name))
    except OSError as exc:
        fail(f"{out_dir}: cannot write ({exc.strerror})")
    _write_json(os.path.join(out_dir, STATE), state)
    return False


def _write(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """``write(fh)`` into ``path`` atomically; an OSError (a full disk, a read-only folder) is a user
    error that keeps the frames written so far."""
    try:
        write_atomically(path, write)
    except OSError as exc:
        fail(f"{path}: cannot write ({exc.strerror}){RESUME}")


def _write_json(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1).encode()
    _write(path, lambda fh: fh.write(text))


def _whole_point_file(path: str) -> Optional[int]:
    """The point count of a point file written earlier; None when it is missing or not (N, 5) float32."""
    try:
        points = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if points.ndim != 2 or points.shape[1] != 5 or points.dtype != np.float32:
        return None
    return int(points.shape[0])


def _read_json(path: str) -> dict[str, Any]:
    """A JSON object file; {} when it is missing or unreadable (then it is rewritten, never trusted)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _frame_entry(index: int, frame, points_file: str, num_points: int) -> dict[str, Any]:
    """A frame's segment.json entry: its pose (vehicle -> global, 16 floats row-major) and labels."""
    labels = list(frame.laser_labels)
    return {
        "index": index, "timestamp": int(frame.timestamp_micros), "points_file": points_file,
        "num_points": num_points, "pose": [float(v) for v in frame.pose.transform],
        "labels": {
            "boxes": [[lb.box.center_x, lb.box.center_y, lb.box.center_z, lb.box.length, lb.box.width,
                       lb.box.height, lb.box.heading] for lb in labels],
            "speed": [[lb.metadata.speed_x, lb.metadata.speed_y] for lb in labels],
            "types": [int(lb.type) for lb in labels],
            "ids": [lb.id for lb in labels],
            "num_points": [int(lb.num_lidar_points_in_box) for lb in labels],
            "difficulty": [int(lb.detection_difficulty_level) for lb in labels],
        },
    }
