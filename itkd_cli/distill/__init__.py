"""itkd_cli.distill: pure KD losses, the shared itKD modules, baselines and teacher freezing."""

from itkd_cli.distill.baselines import build_kd, filter_teacher_detections, kd_lambda
from itkd_cli.distill.itkd import ItkdDistiller, build_distiller
from itkd_cli.distill.losses import KDTerms, combine
from itkd_cli.distill.teacher import FrozenTeacher, check_not_optimised, freeze_teacher, trainable_parameters

__all__ = [
    "FrozenTeacher", "ItkdDistiller", "KDTerms", "build_distiller", "build_kd", "check_not_optimised",
    "combine", "filter_teacher_detections", "freeze_teacher", "kd_lambda", "trainable_parameters",
]
