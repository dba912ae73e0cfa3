"""itkd_cli.evaluate: CenterPoint decoding + NMS, nuScenes result writer and the official devkit evaluation."""

from itkd_cli.evaluate.decode import decode
from itkd_cli.evaluate.run import evaluate_nuscenes, load_model, predict_split

__all__ = ["decode", "evaluate_nuscenes", "load_model", "predict_split"]
