"""Write Waymo Frames with a real range image, for the Waymo tests (run by the Waymo venv's python).

    python make_waymo_frames.py OUT.tfrecord OUT.json

One TOP laser (identity extrinsic and pixel poses, explicit beam inclinations) sees three labelled boxes (a vehicle,
a pedestrian, a cyclist) per frame; pixels are ray-cast against the boxes, the range image and the
camera projections are zlib-compressed MatrixFloat / MatrixInt32 as in the released data. The right
half of the cyclist's pixels is marked as a no-label zone. The JSON records what a reader must find.
"""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np
import tensorflow as tf
from waymo_open_dataset import dataset_pb2, label_pb2

HEIGHT, WIDTH = 24, 720
INCLINATIONS = np.linspace(-0.25, 0.05, HEIGHT)  # ascending, as stored in the calibration
# x, y, z, length, width, height, heading; type
OBJECTS = [((14.0, 1.0, 0.8, 4.5, 2.0, 1.6, 0.3), label_pb2.Label.TYPE_VEHICLE),
           ((9.0, 6.0, 0.9, 0.8, 0.8, 1.8, 1.0), label_pb2.Label.TYPE_PEDESTRIAN),
           ((11.0, -7.0, 0.85, 1.8, 0.7, 1.7, -0.6), label_pb2.Label.TYPE_CYCLIST)]


def ray_directions() -> np.ndarray:
    """(H, W, 3) unit rays of the range image pixels, by the reader's convention (row 0 = highest beam,
    column c at azimuth (2 (W - c - 0.5) / W - 1) pi)."""
    inc = INCLINATIONS[::-1][:, None]
    az = (2.0 * (WIDTH - np.arange(WIDTH) - 0.5) / WIDTH - 1.0) * np.pi
    return np.stack(np.broadcast_arrays(np.cos(inc) * np.cos(az), np.cos(inc) * np.sin(az), np.sin(inc)), -1)


def hit_range(dirs: np.ndarray, box: tuple) -> np.ndarray:
    """Distance along each ray to the box (slab test in the box frame); inf where it misses."""
    x, y, z, length, width, height, yaw = box
    c, s = np.cos(-yaw), np.sin(-yaw)
    origin = np.array([c * -x - s * -y, s * -x + c * -y, -z])
    d = np.stack([c * dirs[..., 0] - s * dirs[..., 1], s * dirs[..., 0] + c * dirs[..., 1], dirs[..., 2]], -1)
    half = np.array([length, width, height]) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - origin) / d, (half - origin) / d
    near = np.nanmax(np.minimum(t1, t2), axis=-1)
    far = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((near <= far) & (near > 0), near, np.inf)


def frame(index: int) -> tuple[dataset_pb2.Frame, dict]:
    dirs = ray_directions()
    shift = np.array([0.5 * index, 0.0, 0.0, 0, 0, 0, 0])  # objects move a little from frame to frame
    boxes = [tuple(np.array(b) + shift) for b, _ in OBJECTS]
    ranges = np.stack([hit_range(dirs, b) for b in boxes])  # (objects, H, W)
    owner = np.argmin(ranges, axis=0)
    rng = np.min(ranges, axis=0)
    hit = np.isfinite(rng)
    image = np.zeros((HEIGHT, WIDTH, 4), np.float32)
    image[..., 0] = np.where(hit, rng, -1.0)
    image[..., 1] = np.where(hit, 2.0 + owner, 0.0)  # raw intensity: the reader applies tanh
    image[..., 2] = np.where(hit, 0.1, 0.0)
    cols = np.arange(WIDTH)[None, :].repeat(HEIGHT, 0)
    cyclist = hit & (owner == 2)
    nlz = cyclist & (cols > np.median(cols[cyclist]))
    image[..., 3] = np.where(nlz, 1.0, -1.0)

    f = dataset_pb2.Frame()
    f.context.name = "itkd_synthetic_segment"
    f.timestamp_micros = 1_000_000 + 100_000 * index
    f.pose.transform.extend(np.eye(4).ravel().tolist())
    calib = f.context.laser_calibrations.add()
    calib.name = dataset_pb2.LaserName.TOP
    calib.beam_inclinations.extend(INCLINATIONS.tolist())
    calib.beam_inclination_min, calib.beam_inclination_max = float(INCLINATIONS[0]), float(INCLINATIONS[-1])
    calib.extrinsic.transform.extend(np.eye(4).ravel().tolist())
    laser = f.lasers.add()
    laser.name = dataset_pb2.LaserName.TOP
    pose = dataset_pb2.MatrixFloat(data=[0.0] * (HEIGHT * WIDTH * 6))  # roll, pitch, yaw, x, y, z per pixel
    pose.shape.dims.extend([HEIGHT, WIDTH, 6])
    laser.ri_return1.range_image_pose_compressed = zlib.compress(pose.SerializeToString())
    for ret, data in ((laser.ri_return1, image), (laser.ri_return2, np.zeros_like(image) - 1.0)):
        mat = dataset_pb2.MatrixFloat(data=data.ravel().tolist())
        mat.shape.dims.extend(list(data.shape))
        ret.range_image_compressed = zlib.compress(mat.SerializeToString())
        proj = dataset_pb2.MatrixInt32(data=[0] * (HEIGHT * WIDTH * 6))
        proj.shape.dims.extend([HEIGHT, WIDTH, 6])
        ret.camera_projection_compressed = zlib.compress(proj.SerializeToString())
    for (box, kind), k in zip(zip(boxes, (t for _, t in OBJECTS)), range(len(OBJECTS))):
        label = f.laser_labels.add()
        b = label.box
        b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading = map(float, box)
        label.type = kind
        label.num_lidar_points_in_box = int(np.sum(hit & (owner == k)))
    facts = {"context": f.context.name, "timestamp": f.timestamp_micros, "points": int(hit.sum() - nlz.sum()),
             "nlz": int(nlz.sum()), "points_per_object": [int(np.sum(hit & (owner == k))) for k in range(len(OBJECTS))],
             "boxes": [list(map(float, b)) for b in boxes], "types": [int(t) for _, t in OBJECTS]}
    return f, facts


def main(out: str, facts_path: str, frames: int = 2) -> None:
    facts = []
    with tf.io.TFRecordWriter(out) as writer:
        for i in range(frames):
            f, fact = frame(i)
            writer.write(f.SerializeToString())
            facts.append(fact)
    with open(facts_path, "w") as fh:
        json.dump(facts, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
