"""Reading Waymo TFRecords, and `frames`: points + labels per frame for `itkd eval --dataset waymo`."""

from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from common import difficulty, fail
from points import frame_points


def read_frames(path: str, on_loss: str = "") -> Iterator:
    """The dataset_pb2.Frame records of a TFRecord file, in file order.

    Args:
        path: the TFRecord.
        on_loss: appended to the error line of an unreadable (truncated, foreign) file.

    Exits (fail): no such file, an unreadable or damaged TFRecord, a record that is not a Waymo Frame.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from waymo_open_dataset import dataset_pb2

    if not os.path.isfile(path):
        fail(f"{path}: no such TFRecord file")
    index = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            frame = dataset_pb2.Frame()
            try:
                frame.ParseFromString(record.numpy())
            except DecodeError:
                fail(f"{path}: record {index} is not a Waymo Frame")
            yield frame
            index += 1
    except tf.errors.DataLossError as exc:
        fail(f"{path}: not a readable TFRecord of Waymo frames (record {index}: {_first_line(exc)}){on_loss}")
    except tf.errors.OpError as exc:  # permissions, a folder, a file gone while reading
        fail(f"{path}: cannot read ({_first_line(exc)})")


def _first_line(exc) -> str:
    return (exc.message.splitlines() or [type(exc).__name__])[0]


def frame_labels(frame) -> dict[str, np.ndarray]:
    """gt_boxes (K, 7) x, y, z, length, width, height, heading; gt_types (K,) uint8; gt_num_points (K,);
    gt_difficulty (K,) by the official rule."""
    labels = list(frame.laser_labels)
    boxes = np.array([[lb.box.center_x, lb.box.center_y, lb.box.center_z, lb.box.length, lb.box.width,
                       lb.box.height, lb.box.heading] for lb in labels], np.float64).reshape(-1, 7)
    num_points = np.array([lb.num_lidar_points_in_box for lb in labels], np.int64)
    level = np.array([lb.detection_difficulty_level for lb in labels], np.int64)
    return {"gt_boxes": boxes, "gt_types": np.array([lb.type for lb in labels], np.uint8),
            "gt_num_points": num_points, "gt_difficulty": difficulty(level, num_points)}


def cmd_frames(out_dir: str, tfrecords: list[str], max_frames: int | None) -> None:
    """OUT_DIR/frame_NNNNNN.npz (points: (N, 5) x, y, z, tanh(intensity), elongation; the gt_* arrays)
    and OUT_DIR/frames.json, the frames' index."""
    os.makedirs(out_dir, exist_ok=True)
    index = []
    for path in tfrecords:
        for frame in read_frames(path):
            if max_frames is not None and len(index) >= max_frames:
                break
            name = f"frame_{len(index):06d}.npz"
            arrays = frame_labels(frame)
            points = frame_points(frame)
            points[:, 3] = np.tanh(points[:, 3])
            arrays["points"] = points
            np.savez(os.path.join(out_dir, name), **arrays)
            index.append({"file": name, "context": frame.context.name, "timestamp": frame.timestamp_micros,
                          "points": int(len(points)), "labels": int(len(arrays["gt_types"])), "source": path})
    with open(os.path.join(out_dir, "frames.json"), "w") as fh:
        json.dump(index, fh, indent=1)
