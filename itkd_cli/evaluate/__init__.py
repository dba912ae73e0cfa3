"""itkd_cli.evaluate: official nuScenes (devkit) and Waymo metrics of a model (decode + NMS: itkd_cli.models.decode)."""

from itkd_cli.evaluate.run import evaluate_nuscenes, evaluate_split, load_model, predict_split

__all__ = ["evaluate_nuscenes", "evaluate_split", "load_model", "predict_split"]
