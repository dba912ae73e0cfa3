"""ONNX ``metadata_props``: everything a deployment needs to feed the graph and decode its outputs
without our code (recipe, classes per task, grid, stride, input/output meaning, box code)."""

from __future__ import annotations

import json
from typing import Any

from itkd_cli.export.wrappers import head_fields, output_names
from itkd_cli.recipe.schema import Recipe

BOX_CODE = ("per head cell (y, x): x = (x + center[0]) * stride * voxel_x + x_min; "
            "y = (y + center[1]) * stride * voxel_y + y_min; z = center_z; (dx, dy, dz) = exp(dim); "
            "yaw = atan2(rot[1], rot[0]) (rot = cos, sin; yaw around +z from +x); (vx, vy) = vel in m/s; "
            "score = sigmoid(hm). Boxes: LiDAR frame, (x, y, z) = box centre, dx = length along the heading, "
            "dy = width, dz = height (OpenPCDet convention).")
SPARSE_NOTE = ("The sparse 3D encoder (MeanVFE + spconv VoxelBackBone8x + HeightCompression) is NOT in this "
               "graph: sparse 3D convolution has no standard ONNX form. Run it with an spconv/TensorRT sparse-conv "
               "plugin or a CUDA-CenterPoint-like runtime, then feed its HeightCompression output here as "
               "'bev' (1, C, H, W) float32, C = conv_out channels x remaining z cells (channel-major, then z).")
DECODE_NOTE = ("In-graph decoding is top-K only: per task K = min(post.top_k, n_classes * H * W) peaks of "
               "sigmoid(hm) (3x3 local maxima only when post.nms is circle), no score threshold and no NMS. Then, "
               "per task and in this order (OpenPCDet's): drop scores <= post.score_threshold and centres outside "
               "post.limit_range, keep the post.pre_max best (not for circle NMS), NMS (post.nms, post.nms_iou), "
               "keep the first post.post_max.")


def _field_meaning(field: str, n_classes: int) -> str:
    return {
        "hm": f"class heatmap LOGITS ({n_classes} classes of this task; score = sigmoid)",
        "center": "sub-cell offset of the box centre (dx, dy) in head cells",
        "center_z": "box centre height z in metres",
        "dim": "log box size (log dx, log dy, log dz)",
        "rot": "(cos yaw, sin yaw)",
        "vel": "velocity (vx, vy) in m/s",
    }[field]


def bev_hw(recipe: Recipe) -> tuple[int, int]:
    """(H, W) of a voxel model's BEV map: three stride-2, pad-1, k3 sparse convs on (ny, nx)."""
    out = []
    for n in (recipe.model.grid.grid_size[1], recipe.model.grid.grid_size[0]):
        for _ in range(3):
            n = (n - 1) // 2 + 1
        out.append(n)
    return out[0], out[1]


def input_spec(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Name -> shape, dtype and meaning of every graph input."""
    m = recipe.model
    if m.vfe.kind == "pillar":
        p, f = m.grid.max_points_per_voxel, m.num_point_features
        spec = {
            "features": ([("P"), p, f], "float32", f"points of each pillar (x, y, z, intensity, time lag)[:{f}], "
                         "zero-padded; P = number of pillars (dynamic); one frame"),
            "num_points": (["P"], "int32", "real points in each pillar (1..max_points)"),
            "coords": (["P", 4], "int32", "pillar cell [batch=0, z=0, y, x]; every (y, x) unique"),
        }
    else:
        h, w = bev_hw(recipe)
        spec = {"bev": ([1, m.bev_in_channels, h, w], "float32", "HeightCompression output of the sparse encoder")}
    return {k: {"shape": s, "dtype": d, "meaning": t} for k, (s, d, t) in spec.items()}


def output_spec(recipe: Recipe, with_decode: bool) -> dict[str, dict[str, Any]]:
    """Name -> shape and meaning of every graph output."""
    m = recipe.model
    if with_decode:
        k = sum(min(m.post.top_k, len(t) * m.head_map_size[0] * m.head_map_size[1]) for t in m.head.tasks)
        spec = {"boxes": [k, 9], "scores": [k], "labels": [k]}
        meaning = {"boxes": "x, y, z, dx, dy, dz, yaw, vx, vy (LiDAR frame; vx = vy = 0 without velocity head)",
                   "scores": "sigmoid heatmap peak score, best first inside each task",
                   "labels": "int64 0-based index into class_names"}
        return {n: {"shape": spec[n], "meaning": meaning[n]} for n in output_names(m, True)}
    channels = {"hm": 0, "center": 2, "center_z": 1, "dim": 3, "rot": 2, "vel": 2}
    h, w = m.head_map_size
    out = {}
    for t, task in enumerate(m.head.tasks):
        for f in head_fields(m):
            c = len(task) if f == "hm" else channels[f]
            out[f"task{t}_{f}"] = {"shape": [1, c, h, w], "meaning": _field_meaning(f, len(task))}
    return out


def build_metadata(recipe: Recipe, with_decode: bool) -> dict[str, str]:
    """String key -> value pairs for ``ModelProto.metadata_props`` (JSON where structured)."""
    m = recipe.model
    graph = "pillar_full" if m.vfe.kind == "pillar" else "voxel_dense"
    meta: dict[str, Any] = {
        "itkd.recipe": recipe.model_dump(mode="json"),
        "itkd.graph": graph,
        "class_names": list(recipe.dataset.class_names),
        "tasks": [list(t) for t in m.head.tasks],
        "voxel_size": list(m.grid.voxel_size),
        "point_range": list(m.grid.point_range),
        "grid_size": list(m.grid.grid_size),
        "feature_map_stride": m.feature_map_stride,
        "head_map_size": list(m.head_map_size),
        "inputs": input_spec(recipe),
        "outputs": output_spec(recipe, with_decode),
        "box_code": BOX_CODE,
        "post_process": m.post.model_dump(mode="json"),
        "with_decode": with_decode,
    }
    if with_decode:
        meta["decode_note"] = DECODE_NOTE
    if graph == "voxel_dense":
        meta["deployment_note"] = SPARSE_NOTE
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def read_metadata(props: Any) -> dict[str, Any]:
    """``ModelProto.metadata_props`` (or onnxruntime's custom_metadata_map) -> dict, JSON values parsed."""
    items = props.items() if hasattr(props, "items") else ((p.key, p.value) for p in props)
    out = {}
    for key, value in items:
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
