"""CenterPoint models (pillar and voxel) with OpenPCDet state_dict keys: the detection loss, decode + NMS, the
teacher checkpoint's recipe and strict load, and the student (derivation and channel selection)."""

from itkd_cli.models.build import build_model
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.models.student import derive_student

__all__ = ["CenterPoint", "build_model", "derive_student"]
