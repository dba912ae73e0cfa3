"""Dataset inspection: frames, boxes per class, our in-box point counts vs the table's num_lidar_pts, and
optionally the per-class counts before and after class-balanced resampling (``data.balance``).

Counting uses our own pose transforms and box convention (``infos.frame_info``) plus our vectorised
membership test (``points.points_in_boxes``), so agreement with ``num_lidar_pts`` checks both.
Two counts per box: ``points_found`` with the pipeline's LiDAR-frame boxes (yaw only, as training sees
them: a sensor mounted with pitch/roll tilts the true box slightly in that frame), and
``points_found_global`` with the points taken to the global frame by our ``lidar_to_global`` and the
annotation's upright box there (the exact geometry, no tilt approximation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from pyquaternion import Quaternion

from itkd_cli.data.balance import resampling_report
from itkd_cli.data.infos import frame_info, get_record, open_nuscenes, split_sample_tokens
from itkd_cli.data.points import load_frame_points, points_in_boxes, transform_points, yaw_of_rotation


def _global_boxes(nusc: Any, ann_tokens: list[str]) -> np.ndarray:
    """(K, 7) annotation boxes in the global frame: x, y, z, l, w, h, yaw."""
    out = np.zeros((len(ann_tokens), 7))
    for i, tok in enumerate(ann_tokens):
        ann = get_record(nusc, "sample_annotation", tok, "inspect")
        w, l, h = ann["size"]
        out[i] = [*ann["translation"], l, w, h, yaw_of_rotation(Quaternion(ann["rotation"]).rotation_matrix)]
    return out


def inspect_dataset(root: str | Path, version: str, split: Optional[str] = None,
                    balanced: Optional[tuple[Sequence[str], int]] = None) -> dict:
    """Inspect a nuScenes-format dataset (keyframe points only, no sweeps).

    Args:
        root: dataset root. version: version folder. split: split name, or None for every sample.
        balanced: (class_names, seed) to also count the frames as class-balanced resampling
            (dataset.balanced_resampling) would give them to training.

    Returns:
        {"frames", "boxes": {class: count}, "annotations": [{token, sample, class, num_lidar_pts,
        points_found, points_found_global}], "total", and "exact"/"within_2" (LiDAR-frame boxes) and
        "exact_global"/"within_2_global" counts of boxes agreeing with num_lidar_pts}; with ``balanced``
        also "balanced": {"class_names", "seed", "before", "after"} (``data.balance.class_counts`` each).

    Raises:
        ItkdError: as ``data.balance.balanced_indices`` when no frame holds the classes.
    """
    nusc = open_nuscenes(root, version)
    annotations, counts, labels = [], {}, []  # labels: the gt_names of each frame, for --balanced
    tokens = split_sample_tokens(nusc, split)
    for token in tokens:
        info = frame_info(nusc, token, sweeps=1, max_lag=1.0)
        points = load_frame_points(root, info, sweeps=1)
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 9)
        labels.append({"gt_names": info["gt_names"]})
        found = points_in_boxes(points, boxes).sum(axis=0)
        in_global = transform_points(points, np.asarray(info["lidar_to_global"]))
        found_g = points_in_boxes(in_global, _global_boxes(nusc, info["ann_tokens"])).sum(axis=0)
        for ann, name, npts, n, ng in zip(info["ann_tokens"], info["gt_names"], info["num_lidar_pts"], found, found_g):
            counts[name] = counts.get(name, 0) + 1
            annotations.append({"token": ann, "sample": token, "class": name, "num_lidar_pts": int(npts),
                                "points_found": int(n), "points_found_global": int(ng)})
    diffs = np.array([abs(a["num_lidar_pts"] - a["points_found"]) for a in annotations], dtype=np.int64)
    diffs_g = np.array([abs(a["num_lidar_pts"] - a["points_found_global"]) for a in annotations], dtype=np.int64)
    result = {
        "frames": len(tokens),
        "boxes": dict(sorted(counts.items())),
        "annotations": annotations,
        "total": len(annotations),
        "exact": int((diffs == 0).sum()),
        "within_2": int((diffs <= 2).sum()),
        "exact_global": int((diffs_g == 0).sum()),
        "within_2_global": int((diffs_g <= 2).sum()),
    }
    if balanced is not None:
        classes, seed = balanced
        result["balanced"] = {"class_names": list(classes), **resampling_report(labels, classes, seed, split or "all")}
    return result
