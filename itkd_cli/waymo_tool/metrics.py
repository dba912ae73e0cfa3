"""`objects` (an official Objects file as arrays) and `metrics` (official mAP / mAPH on arrays)."""

from __future__ import annotations

import os

import numpy as np

from common import difficulty, fail, write_json_atomically

# The official tool's config (waymo_open_dataset/metrics/tools/compute_detection_metrics_main.cc).
IOU_BY_TYPE = (0.0, 0.7, 0.5, 0.5, 0.5)  # UNKNOWN, VEHICLE, PEDESTRIAN, SIGN, CYCLIST


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
        fail(f"{src}: cannot read ({exc.strerror})")
    except DecodeError:
        fail(f"{src}: not a Waymo Objects proto")
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
             num_points=num_points, difficulty=difficulty(level, num_points),
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
        fail(f"{path}: file not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data]
        if missing:
            fail(f"{path}: missing arrays {', '.join(missing)}")
        return {k: data[k] for k in keys}


def cmd_metrics(pred_path: str, gt_path: str, out: str) -> None:
    import tensorflow as tf
    from waymo_open_dataset.metrics.ops import py_metrics_ops
    from waymo_open_dataset.metrics.python import config_util_py

    keys = ("context", "timestamp", "boxes", "types")
    pred = _load(pred_path, keys + ("scores", "overlap_nlz"))
    gt = _load(gt_path, keys + ("num_points", "difficulty"))
    keep = gt["num_points"] > 0  # the official tool ignores boxes without points
    # Raw annotated levels (0: none) get the official rule here; levels it already set are kept as they are.
    gt["difficulty"] = difficulty(gt["difficulty"], gt["num_points"])
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
    write_json_atomically(out, {"breakdowns": rows, **counts})
