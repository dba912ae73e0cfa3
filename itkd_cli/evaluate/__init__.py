"""itkd_cli.evaluate: nuScenes result writer and the official devkit evaluation (decode + NMS: itkd_cli.models.decode)."""

from itkd_cli.evaluate.run import evaluate_nuscenes, load_model, predict_split

__all__ = ["evaluate_nuscenes", "load_model", "predict_split"]
