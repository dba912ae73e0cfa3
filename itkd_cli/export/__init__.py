"""itkd_cli.export: checkpoint -> standard ONNX (+ metadata), verified in onnxruntime, model card."""

from itkd_cli.export.api import ExportResult, export_onnx

__all__ = ["ExportResult", "export_onnx"]
