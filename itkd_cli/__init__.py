"""itkd: compress LiDAR CenterPoint detectors with interchange-transfer knowledge distillation."""

__version__ = "0.1.0"
