"""Build a CenterPoint from the recipe's ModelConfig (every width comes from the recipe)."""

from __future__ import annotations

from itkd_cli.models.backbones_2d import BaseBEVBackbone
from itkd_cli.models.backbones_3d import VoxelBackBone8x
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.models.dense_heads import CenterHead
from itkd_cli.models.map_to_bev import HeightCompression, PointPillarScatter
from itkd_cli.models.vfe import MeanVFE, PillarVFE
from itkd_cli.recipe.schema import ModelConfig


def build_model(model_cfg: ModelConfig) -> CenterPoint:
    """Instantiate the detector described by ``model_cfg`` (OpenPCDet key names, default init)."""
    grid = model_cfg.grid
    if model_cfg.vfe.kind == "pillar":
        vfe = PillarVFE(model_cfg.num_point_features, model_cfg.vfe.filters, grid.voxel_size, grid.point_range)
        backbone_3d = None
        to_bev = PointPillarScatter(model_cfg.bev_in_channels, grid.grid_size)
    else:
        vfe = MeanVFE(model_cfg.num_point_features)
        b3 = model_cfg.backbone_3d
        backbone_3d = VoxelBackBone8x(model_cfg.num_point_features, grid.grid_size, b3.filters, b3.out_channels,
                                      residual=b3.kind == "res")
        to_bev = HeightCompression(model_cfg.bev_in_channels)
    b2 = model_cfg.backbone_2d
    neck = BaseBEVBackbone(model_cfg.bev_in_channels, b2.layer_nums, b2.layer_strides, b2.num_filters,
                           b2.upsample_strides, b2.num_upsample_filters, b2.use_conv_for_no_stride)
    h = model_cfg.head
    head = CenterHead(neck.out_channels, h.tasks, h.shared_conv_channels, h.head_conv_channels, h.num_head_convs,
                      h.with_velocity, h.hm_init_bias)
    return CenterPoint(vfe, backbone_3d, to_bev, neck, head)
