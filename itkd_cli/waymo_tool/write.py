"""`write`: Waymo Frames built from plain arrays, as one TFRecord (synthetic segments with known range images).

    FRAMES_DIR/frames.json   {"context": SEGMENT_NAME, "frames": ["f0.npz", ...]}
    FRAMES_DIR/<frame>.npz   (np.savez, no pickle):
        timestamp ()            int64 micros
        pose (4, 4)             vehicle -> global
        laser_names (L,)        dataset_pb2.LaserName: TOP=1, FRONT=2, SIDE_LEFT=3, SIDE_RIGHT=4, REAR=5
        per laser name n:
          ri1_n (H, W, 4)       range (<= 0: no return), intensity (raw), elongation, no-label zone (-1 / 1)
          ri2_n (H, W, 4)       second returns (absent: an image without returns)
          extrinsic_n (4, 4)    sensor -> vehicle
          inclinations_n        (H,) ascending beam inclinations (TOP in released data), or (2,) min, max of
                                uniformly spaced beams (the side lidars); a 2-row image reads (2,) as (H,)
          top_pose_n (H, W, 6)  TOP only, optional: per-pixel roll, pitch, yaw, x, y, z (default: the frame pose)
        label_boxes (K, 7)      x, y, z, length, width, height, heading (vehicle frame); K may be 0
        label_types (K,)        label_pb2.Label.Type        label_ids (K,) str
        label_speed (K, 2)      speed x, y                  label_accel (K, 2) accel x, y
        label_num_points (K,)   num_lidar_points_in_box     label_difficulty (K,) detection_difficulty_level

Range images, the TOP pixel poses and all-zero camera projections are zlib-compressed MatrixFloat /
MatrixInt32 protos, as in the released data, so frame_utils reads them as it reads real frames.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Union

import numpy as np

from common import fail

TOP = 1
LASER_NAMES = (1, 2, 3, 4, 5)
Shape = tuple[Union[int, str], ...]  # sizes, or names bound by the first array that uses them


class Arrays:
    """One .npz file's arrays, checked as they are read: a failure names the file and the array."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            fail(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                self.arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            fail(f"{path}: not a readable .npz file without pickles ({exc})")
        self.path = path

    def get(self, key: str, shape: Shape, kind: str = "fiu", sizes: dict | None = None) -> np.ndarray:
        """The array ``key`` of ``shape`` (named sizes bound in ``sizes``) and a dtype kind in ``kind``."""
        if key not in self.arrays:
            fail(f"{self.path}: array {key} missing")
        array = self.arrays[key]
        sizes = {} if sizes is None else sizes
        for name, size in zip(shape, array.shape):
            if isinstance(name, str):
                sizes.setdefault(name, size)
        want = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in shape)
        if array.shape != want:
            fail(f"{self.path}: array {key} has shape {array.shape}, expected {want}")
        if array.size and array.dtype.kind not in kind:  # an empty array may be of any dtype
            fail(f"{self.path}: array {key} has dtype {array.dtype}, expected {_KINDS[kind]}")
        return array

    def rigid(self, key: str) -> np.ndarray:
        """A (4, 4) rigid transform (rotation, translation, last row 0 0 0 1)."""
        m = self.get(key, (4, 4)).astype(np.float64)
        r = m[:3, :3]
        if not (np.allclose(r @ r.T, np.eye(3), atol=1e-6) and np.linalg.det(r) > 0
                and np.allclose(m[3], [0, 0, 0, 1])):
            fail(f"{self.path}: array {key} is not a rigid transform (rotation + translation)")
        return m


_KINDS = {"fiu": "numbers", "iu": "integers", "US": "strings"}


def cmd_write(out: str, frames_dir: str) -> None:
    """All frames of FRAMES_DIR as one TFRecord at OUT (written to OUT.tmp, then renamed)."""
    context, names = _read_index(frames_dir)
    records = [build_frame(context, os.path.join(frames_dir, name)).SerializeToString() for name in names]
    import tensorflow as tf

    tmp = out + ".tmp"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
        os.replace(tmp, out)
    except (OSError, tf.errors.OpError) as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        fail(f"{out}: cannot write ({exc.strerror if isinstance(exc, OSError) else exc.message.splitlines()[0]})")


def _read_index(frames_dir: str) -> tuple[str, list[str]]:
    path = os.path.join(frames_dir, "frames.json")
    try:
        with open(path) as fh:
            index = json.load(fh)
    except OSError as exc:
        fail(f"{path}: cannot read ({exc.strerror})")
    except ValueError as exc:
        fail(f"{path}: not JSON ({exc})")
    if not (isinstance(index, dict) and isinstance(index.get("context"), str)
            and isinstance(index.get("frames"), list) and all(isinstance(f, str) for f in index["frames"])):
        fail(f'{path}: expected {{"context": SEGMENT_NAME, "frames": ["f0.npz", ...]}}')
    if not index["frames"]:
        fail(f"{path}: lists no frames")
    return index["context"], index["frames"]


def build_frame(context: str, path: str):
    """The dataset_pb2.Frame of one .npz file (layout: this module's docstring)."""
    from waymo_open_dataset import dataset_pb2

    arrays = Arrays(path)
    frame = dataset_pb2.Frame()
    frame.context.name = context
    frame.timestamp_micros = int(arrays.get("timestamp", (), "iu"))
    pose = arrays.rigid("pose")
    frame.pose.transform.extend(pose.ravel().tolist())
    names = arrays.get("laser_names", ("L",), "iu").tolist()
    bad = [n for n in names if n not in LASER_NAMES] or [n for n in set(names) if names.count(n) > 1]
    if bad:
        fail(f"{path}: array laser_names: {bad[0]} is not a laser name or is repeated (TOP=1 ... REAR=5, once each)")
    for name in names:
        _add_laser(frame, arrays, name, pose)
    _add_labels(frame, arrays)
    return frame


def _add_laser(frame, arrays: Arrays, n: int, pose: np.ndarray) -> None:
    """Laser ``n``'s calibration and its two returns."""
    from waymo_open_dataset import dataset_pb2

    sizes: dict = {}
    ri1 = arrays.get(f"ri1_{n}", ("H", "W", 4), sizes=sizes).astype(np.float32)
    height, width = ri1.shape[:2]
    ri2 = (arrays.get(f"ri2_{n}", ("H", "W", 4), sizes=sizes).astype(np.float32) if f"ri2_{n}" in arrays.arrays
           else np.full_like(ri1, -1.0))
    calib = frame.context.laser_calibrations.add()
    calib.name = n
    calib.extrinsic.transform.extend(arrays.rigid(f"extrinsic_{n}").ravel().tolist())
    inclinations = arrays.get(f"inclinations_{n}", ("I",), sizes={}).astype(np.float64)
    if len(inclinations) == height:
        if not np.all(np.diff(inclinations) > 0):
            fail(f"{arrays.path}: array inclinations_{n}: beam inclinations must be ascending")
        calib.beam_inclinations.extend(inclinations.tolist())
    elif len(inclinations) != 2 or not inclinations[0] < inclinations[1]:
        fail(f"{arrays.path}: array inclinations_{n} has shape {inclinations.shape}, expected ({height},) "
             "ascending beam inclinations or (2,) min < max")
    calib.beam_inclination_min, calib.beam_inclination_max = float(inclinations[0]), float(inclinations[-1])

    laser = frame.lasers.add()
    laser.name = n
    projection = _compressed(np.zeros((height, width, 6), np.int32), dataset_pb2.MatrixInt32)
    for ret, image in ((laser.ri_return1, ri1), (laser.ri_return2, ri2)):
        ret.range_image_compressed = _compressed(image, dataset_pb2.MatrixFloat)
        ret.camera_projection_compressed = projection
    if n == TOP:
        if f"top_pose_{n}" in arrays.arrays:
            pixel_pose = arrays.get(f"top_pose_{n}", ("H", "W", 6), sizes=sizes)
        else:
            pixel_pose = np.broadcast_to(roll_pitch_yaw_xyz(pose), (height, width, 6))
        laser.ri_return1.range_image_pose_compressed = _compressed(pixel_pose.astype(np.float32),
                                                                   dataset_pb2.MatrixFloat)
    elif f"top_pose_{n}" in arrays.arrays:
        fail(f"{arrays.path}: array top_pose_{n}: only the TOP laser ({TOP}) has per-pixel poses")


def roll_pitch_yaw_xyz(pose: np.ndarray) -> np.ndarray:
    """(6,) a rigid (4, 4) pose as the range image pixel poses store it: transform_utils.get_rotation_matrix
    builds R = Rz(yaw) @ Ry(pitch) @ Rx(roll), so R[2] = (-sin p, cos p sin r, cos p cos r)."""
    r = pose[:3, :3]
    return np.array([math.atan2(r[2, 1], r[2, 2]), math.atan2(-r[2, 0], math.hypot(r[0, 0], r[1, 0])),
                     math.atan2(r[1, 0], r[0, 0]), *pose[:3, 3]])


def _compressed(values: np.ndarray, matrix_cls) -> bytes:
    """A zlib-compressed MatrixFloat / MatrixInt32 (data row-major, shape dims), as in the released data."""
    matrix = matrix_cls()
    matrix.data.extend(values.ravel().tolist())
    matrix.shape.dims.extend(list(values.shape))
    return zlib.compress(matrix.SerializeToString())


def _add_labels(frame, arrays: Arrays) -> None:
    from waymo_open_dataset import label_pb2

    sizes: dict = {}
    boxes = arrays.get("label_boxes", ("K", 7), sizes=sizes)
    types = arrays.get("label_types", ("K",), "iu", sizes)
    ids = arrays.get("label_ids", ("K",), "US", sizes)
    speed = arrays.get("label_speed", ("K", 2), sizes=sizes)
    accel = arrays.get("label_accel", ("K", 2), sizes=sizes)
    num_points = arrays.get("label_num_points", ("K",), "iu", sizes)
    level = arrays.get("label_difficulty", ("K",), "iu", sizes)
    if not set(types.tolist()) <= set(label_pb2.Label.Type.values()):
        fail(f"{arrays.path}: array label_types: {sorted(set(types.tolist()))} holds a value that is not a "
             f"label_pb2.Label.Type {sorted(label_pb2.Label.Type.values())}")
    if not set(level.tolist()) <= set(label_pb2.Label.DifficultyLevel.values()):
        fail(f"{arrays.path}: array label_difficulty: expected values in "
             f"{sorted(label_pb2.Label.DifficultyLevel.values())}")
    for k in range(len(boxes)):
        label = frame.laser_labels.add()
        box = label.box
        box.center_x, box.center_y, box.center_z, box.length, box.width, box.height, box.heading = map(float, boxes[k])
        label.type = int(types[k])
        label.id = ids[k].decode() if isinstance(ids[k], bytes) else str(ids[k])
        label.metadata.speed_x, label.metadata.speed_y = map(float, speed[k])
        label.metadata.accel_x, label.metadata.accel_y = map(float, accel[k])
        label.num_lidar_points_in_box = int(num_points[k])
        label.detection_difficulty_level = int(level[k])
