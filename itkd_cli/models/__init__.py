"""CenterPoint models (pillar and voxel) with OpenPCDet state_dict keys, and student derivation."""

from itkd_cli.models.build import build_model
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.models.student import derive_student

__all__ = ["CenterPoint", "build_model", "derive_student"]
