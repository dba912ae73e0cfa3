"""itkd_cli.export: checkpoint -> standard ONNX (+ metadata), verified in onnxruntime, model card.

Export reads no dataset: the caller (``itkd_cli.pipeline.export_run.export_checkpoint``) passes the frames."""

from itkd_cli.export.api import ExportResult, export_onnx, load_for_export

__all__ = ["ExportResult", "export_onnx", "load_for_export"]
