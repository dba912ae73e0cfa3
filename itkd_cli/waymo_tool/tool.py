"""The Waymo side of `itkd eval --dataset waymo`: run by the Waymo venv's python, never imported by itkd.

waymo-open-dataset pins tensorflow 2.13 and typing_extensions 4.5, which break torch and pydantic, so it
lives in its own venv (`make waymo-env`) and this file talks to itkd through .npz files only (no pickle):

    python tool.py frames   OUT_DIR TFRECORD... [--max-frames N]   # points + labels per frame
    python tool.py objects  OBJECTS.bin OUT.npz                    # an official Objects file
    python tool.py metrics  PRED.npz GT.npz OUT.json               # official mAP / mAPH

Imports: the standard library, numpy, tensorflow and waymo_open_dataset only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

import numpy as np

# The official tool's config (waymo_open_dataset/metrics/tools/compute_detection_metrics_main.cc).
IOU_BY_TYPE = (0.0, 0.7, 0.5, 0.5, 0.5)  # UNKNOWN, VEHICLE, PEDESTRIAN, SIGN, CYCLIST
LEVEL_2_MAX_POINTS = 5  # unlabelled difficulty: LEVEL_2 when the box holds <= 5 lidar points


def _fail(msg: str) -> NoReturn:
    print(f"waymo_tool: {msg}", file=sys.stderr)
    sys.exit(2)


def _difficulty(level: np.ndarray, num_points: np.ndarray) -> np.ndarray:
    """Official rule: an annotated level is kept; UNKNOWN (0) becomes LEVEL_2 at <= 5 points, else LEVEL_1."""
    auto = np.where(num_points <= LEVEL_2_MAX_POINTS, 2, 1)
    return np.where(level == 0, auto, level).astype(np.uint8)


def _frame_points(frame) -> np.ndarray:
    """All lidars, both returns, vehicle frame: (N, 5) x, y, z, tanh(intensity), elongation; points
    inside no-label zones dropped (OpenPCDet's Waymo preprocessing)."""
    from waymo_open_dataset.utils import frame_utils

    if not frame.lasers:
        return np.zeros((0, 5), np.float32)
    range_images, camera_projections, _, top_pose = frame_utils.parse_range_image_and_camera_projection(frame)
    parts = []
    returns = min(len(images) for images in range_images.values())  # released data: 2; OpenPCDet uses both
    for ri_index in range(min(returns, 2)):
        points, _ = frame_utils.convert_range_image_to_point_cloud(
            frame, range_images, camera_projections, top_pose, ri_index=ri_index, keep_polar_features=True)
        for calib, pts in zip(sorted(frame.context.laser_calibrations, key=lambda c: c.name), points):
            image = range_images[calib.name][ri_index]
            ri = np.asarray(image.data, np.float32).reshape(tuple(image.shape.dims))
            nlz = ri[..., 3][ri[..., 0] > 0]  # same row-major order as the points
            pts = pts[nlz == -1]  # -1: not in a no-label zone
            parts.append(np.stack([pts[:, 3], pts[:, 4], pts[:, 5], np.tanh(pts[:, 1]), pts[:, 2]], axis=1))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 5), np.float32)


def _frame_labels(frame) -> dict[str, np.ndarray]:
    labels = list(frame.laser_labels)
    boxes = np.array([[lb.box.center_x, lb.box.center_y, lb.box.center_z, lb.box.length, lb.box.width,
                       lb.box.height, lb.box.heading] for lb in labels], np.float64).reshape(-1, 7)
    num_points = np.array([lb.num_lidar_points_in_box for lb in labels], np.int64)
    level = np.array([lb.detection_difficulty_level for lb in labels], np.int64)
    return {"gt_boxes": boxes, "gt_types": np.array([lb.type for lb in labels], np.uint8),
            "gt_num_points": num_points, "gt_difficulty": _difficulty(level, num_points)}


def cmd_frames(out_dir: str, tfrecords: list[str], max_frames: int | None) -> None:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from waymo_open_dataset import dataset_pb2

    os.makedirs(out_dir, exist_ok=True)
    index = []
    for path in tfrecords:
        if not os.path.isfile(path):
            _fail(f"{path}: no such TFRecord file")
        try:
            for record in tf.data.TFRecordDataset(path):
                if max_frames is not None and len(index) >= max_frames:
                    break
                frame = dataset_pb2.Frame()
                try:
                    frame.ParseFromString(record.numpy())
                except DecodeError:
                    _fail(f"{path}: record {len(index)} is not a Waymo Frame")
                name = f"frame_{len(index):06d}.npz"
                arrays = _frame_labels(frame)
                arrays["points"] = _frame_points(frame)
                np.savez(os.path.join(out_dir, name), **arrays)
                index.append({"file": name, "context": frame.context.name, "timestamp": frame.timestamp_micros,
                              "points": int(len(arrays["points"])), "labels": int(len(arrays["gt_types"])),
                              "source": path})
        except tf.errors.DataLossError as exc:
            _fail(f"{path}: not a readable TFRecord of Waymo frames ({exc.message.splitlines()[0]})")
    with open(os.path.join(out_dir, "frames.json"), "w") as fh:
        json.dump(index, fh, indent=1)


def cmd_objects(src: str, out: str) -> None:
    """An official Objects file (predictions or ground truth) as arrays; boxes without points are kept
    here and dropped by `metrics` on the ground-truth side, as the official tool does."""
    from google.protobuf.message import DecodeError
    from waymo_open_dataset.protos import metrics_pb2

    objects = metrics_pb2.Objects()
    try:
        with open(src, "rb") as fh:
            objects.ParseFromString(fh.read())
    except OSError as exc:
        _fail(f"{src}: cannot read ({exc.strerror})")
    except DecodeError:
        _fail(f"{src}: not a Waymo Objects proto")
    objs = list(objects.objects)
    box = [o.object.box for o in objs]
    num_points = np.array([o.object.num_lidar_points_in_box for o in objs], np.int64)
    level = np.array([o.object.detection_difficulty_level for o in objs], np.int64)
    np.savez(out,
             context=np.array([f"{o.context_name}_{o.camera_name}" for o in objs], dtype=str),
             timestamp=np.array([o.frame_timestamp_micros for o in objs], np.int64),
             boxes=np.array([[b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading]
                             for b in box], np.float64).reshape(-1, 7),
             types=np.array([o.object.type for o in objs], np.uint8),
             scores=np.array([o.score for o in objs], np.float32),
             num_points=num_points, difficulty=_difficulty(level, num_points),
             overlap_nlz=np.array([o.overlap_with_nlz for o in objs], bool))


def official_config():
    """The official tool's metrics config: OBJECT_TYPE and RANGE breakdowns at LEVEL_1 and LEVEL_2,
    Hungarian matching, 3D IoU 0.7 vehicle / 0.5 others, score cut-offs 0, 0.01, ..., 1."""
    from waymo_open_dataset import label_pb2
    from waymo_open_dataset.protos import breakdown_pb2, metrics_pb2

    config = metrics_pb2.Config()
    for generator in (breakdown_pb2.Breakdown.OBJECT_TYPE, breakdown_pb2.Breakdown.RANGE):
        config.breakdown_generator_ids.append(generator)
        config.difficulties.add().levels.extend([label_pb2.Label.LEVEL_1, label_pb2.Label.LEVEL_2])
    config.matcher_type = metrics_pb2.MatcherProto.TYPE_HUNGARIAN
    config.iou_thresholds.extend(IOU_BY_TYPE)
    config.box_type = label_pb2.Label.Box.TYPE_3D
    config.score_cutoffs.extend([i * 0.01 for i in range(100)] + [1.0])
    return config


def _load(path: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        _fail(f"{path}: file not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data]
        if missing:
            _fail(f"{path}: missing arrays {', '.join(missing)}")
        return {k: data[k] for k in keys}


def cmd_metrics(pred_path: str, gt_path: str, out: str) -> None:
    import tensorflow as tf
    from waymo_open_dataset.metrics.ops import py_metrics_ops
    from waymo_open_dataset.metrics.python import config_util_py

    keys = ("context", "timestamp", "boxes", "types")
    pred = _load(pred_path, keys + ("scores", "overlap_nlz"))
    gt = _load(gt_path, keys + ("num_points", "difficulty"))
    keep = gt["num_points"] > 0  # the official tool ignores boxes without points
    gt = {k: v[keep] for k, v in gt.items()}
    frames = sorted(set(zip(gt["context"].tolist(), gt["timestamp"].tolist()))
                    | set(zip(pred["context"].tolist(), pred["timestamp"].tolist())))
    frame_id = {f: i for i, f in enumerate(frames)}

    def ids(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([frame_id[f] for f in zip(d["context"].tolist(), d["timestamp"].tolist())], np.int64)

    config = official_config()
    result = py_metrics_ops.detection_metrics(
        prediction_bbox=tf.constant(pred["boxes"], tf.float32), prediction_type=tf.constant(pred["types"], tf.uint8),
        prediction_score=tf.constant(pred["scores"], tf.float32), prediction_frame_id=tf.constant(ids(pred)),
        prediction_overlap_nlz=tf.constant(pred["overlap_nlz"], tf.bool),
        ground_truth_bbox=tf.constant(gt["boxes"], tf.float32), ground_truth_type=tf.constant(gt["types"], tf.uint8),
        ground_truth_frame_id=tf.constant(ids(gt)), ground_truth_difficulty=tf.constant(gt["difficulty"], tf.uint8),
        config=config.SerializeToString())
    names = config_util_py.get_breakdown_names_from_config(config)
    rows = {name: {"mAP": float(ap), "mAPH": float(aph)}
            for name, ap, aph in zip(names, result.average_precision.numpy(),
                                     result.average_precision_ha_weighted.numpy())}
    counts = {"frames": len(frames), "predictions": int(len(pred["types"])), "ground_truths": int(len(gt["types"]))}
    with open(out + ".tmp", "w") as fh:
        json.dump({"breakdowns": rows, **counts}, fh, indent=1)
    os.replace(out + ".tmp", out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="waymo_tool", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("frames")
    p.add_argument("out_dir")
    p.add_argument("tfrecords", nargs="+")
    p.add_argument("--max-frames", type=int, default=None)
    p = sub.add_parser("objects")
    p.add_argument("src")
    p.add_argument("out")
    p = sub.add_parser("metrics")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("out")
    args = parser.parse_args(argv)
    # Before tensorflow / protobuf load (they are imported by the commands, not by this module):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the metrics op logs every call at INFO otherwise
    # frame_utils parses range images with ParseFromString(bytearray(...)), which the upb protobuf (4.21+)
    # that this venv resolves rejects ("expected bytes, bytearray found"); the pure-Python one accepts it.
    os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    if args.cmd == "frames":
        cmd_frames(args.out_dir, args.tfrecords, args.max_frames)
    elif args.cmd == "objects":
        cmd_objects(args.src, args.out)
    else:
        cmd_metrics(args.pred, args.gt, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
