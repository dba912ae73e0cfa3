"""Every reference recipe decodes with its upstream config's POST_PROCESSING, field by field.

The table is typed by hand from the upstream files (each row names its repository and path), never derived
from our recipes, so a recipe edit that drifts from upstream fails here. A student recipe decodes as its
teacher's config (it keeps the teacher's head and post-processing).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from itkd_cli.recipe.load import builtin_names, load_recipe


class Upstream(NamedTuple):
    source: str  # repository and config path
    SCORE_THRESH: float
    POST_CENTER_LIMIT_RANGE: tuple[float, ...]
    MAX_OBJ_PER_SAMPLE: int
    NMS_TYPE: str
    NMS_THRESH: float
    NMS_PRE_MAXSIZE: int
    NMS_POST_MAXSIZE: int


WAYMO_PILLAR = Upstream("open-mmlab/OpenPCDet tools/cfgs/waymo_models/centerpoint_pillar_1x.yaml",
                        0.1, (-80, -80, -10.0, 80, 80, 10.0), 500, "nms_gpu", 0.7, 4096, 500)
WAYMO_VOXEL = Upstream("open-mmlab/OpenPCDet tools/cfgs/waymo_models/centerpoint.yaml",
                       0.1, (-75.2, -75.2, -2, 75.2, 75.2, 4), 500, "nms_gpu", 0.7, 4096, 500)
NUSC_VOXEL = Upstream("open-mmlab/OpenPCDet tools/cfgs/nuscenes_models/cbgs_voxel0075_res3d_centerpoint.yaml",
                      0.1, (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0), 500, "nms_gpu", 0.2, 1000, 83)
# OpenPCDet has no cbgs_pp_centerpoint.yaml; its 0.2 m pillar, stride-4 nuScenes CenterPoint is this one.
NUSC_PILLAR = Upstream("open-mmlab/OpenPCDet tools/cfgs/nuscenes_models/cbgs_dyn_pp_centerpoint.yaml",
                       0.1, (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0), 500, "nms_gpu", 0.2, 1000, 83)

UPSTREAM = {
    "centerpoint-pillar-waymo": WAYMO_PILLAR,
    "cp-pillar-waymo-itkd-1-2": WAYMO_PILLAR,
    "cp-pillar-waymo-itkd-1-4": WAYMO_PILLAR,
    "cp-pillar-waymo-itkd-paper-1-4": WAYMO_PILLAR,
    "centerpoint-voxel-waymo": WAYMO_VOXEL,
    "cp-voxel-waymo-itkd-1-4": WAYMO_VOXEL,
    "centerpoint-voxel-nuscenes": NUSC_VOXEL,
    "cp-voxel-nuscenes-itkd-1-4": NUSC_VOXEL,
    "centerpoint-pillar-nuscenes": NUSC_PILLAR,
    "cp-pillar-nuscenes-itkd-1-4": NUSC_PILLAR,
    "sparsekd-cp-voxel-s": Upstream("CVMI-Lab/SparseKD tools/cfgs/waymo_models/cp-voxel/cp-voxel-s.yaml",
                                    0.1, (-75.2, -75.2, -2, 75.2, 75.2, 4), 500, "nms_gpu", 0.7, 4096, 500),
    "sparsekd-cp-voxel-xs": Upstream("CVMI-Lab/SparseKD tools/cfgs/waymo_models/cp-voxel/cp-voxel-xs.yaml",
                                     0.1, (-75.2, -75.2, -2, 75.2, 75.2, 4), 500, "nms_gpu", 0.7, 4096, 500),
    "sparsekd-cp-voxel-xxs": Upstream("CVMI-Lab/SparseKD tools/cfgs/waymo_models/cp-voxel/cp-voxel-xxs.yaml",
                                      0.1, (-75.2, -75.2, -2, 75.2, 75.2, 4), 500, "nms_gpu", 0.7, 4096, 500),
}
NMS_KIND = {"nms_gpu": "rotated"}  # OpenPCDet iou3d_nms_utils.nms_gpu: rotated BEV IoU, suppress IoU > NMS_THRESH


def test_every_reference_recipe_has_an_upstream_row() -> None:
    ours = {n for n in builtin_names() if not n.startswith("synth-")}  # synth-* are our own worlds
    assert ours == set(UPSTREAM)


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_recipe_post_processing_is_upstream(name: str) -> None:
    up, post = UPSTREAM[name], load_recipe(name).model.post
    fields = {"score_threshold": (post.score_threshold, up.SCORE_THRESH),
              "limit_range": (tuple(post.limit_range), tuple(float(v) for v in up.POST_CENTER_LIMIT_RANGE)),
              "top_k": (post.top_k, up.MAX_OBJ_PER_SAMPLE),
              "nms": (post.nms, NMS_KIND[up.NMS_TYPE]),
              "nms_iou": (post.nms_iou, up.NMS_THRESH),
              "pre_max": (post.pre_max, up.NMS_PRE_MAXSIZE),
              "post_max": (post.post_max, up.NMS_POST_MAXSIZE)}
    wrong = {f"model.post.{k}": ours for k, (ours, theirs) in fields.items() if ours != theirs}
    assert not wrong, f"{name}: differs from {up.source}: {wrong}"
