"""Write an export module as ONE self-contained .onnx file, with metadata, checked by onnx.checker."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.core.io import atomic_path


def _trace_to(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: Sequence[str],
              output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False).

    Why not dynamo: it only emits opset >= 18 natively and its down-conversion to opset 17 failed on
    our graphs (onnx version_converter assertion); the TorchScript exporter writes the requested opset,
    honours ``dynamic_axes`` and keeps the weights inside the one .onnx file.
    """
    training = module.training
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about constants; parity is checked after export
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, do_constant_folding=True)
    # The exporter restores the ORIGINAL mode recursively: put the module back to what it was.
    module.train(training)


def write_onnx(module: nn.Module, args: tuple[Tensor, ...], path: Path, input_names: Sequence[str],
               output_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]], opset: int,
               metadata: Mapping[str, str]) -> Path:
    """Export ``module`` on example ``args`` to ``path`` atomically, add ``metadata_props``, check it.

    Args:
        module: export wrapper in eval mode (tensors in, tuple of tensors out).
        args: example inputs (real data) used for tracing.
        path: destination .onnx (weights inside the file, no .onnx.data).
        input_names, output_names: graph names, in argument / return order.
        dynamic_axes: input or output name -> {axis: symbolic name}.
        opset: ONNX opset.
        metadata: key -> string value pairs stored in ``ModelProto.metadata_props``.

    Raises:
        ItkdError: the out folder is not writable.
        JobFailed: the exporter fails or ``onnx.checker.check_model`` rejects the graph.
    """
    import onnx

    with atomic_path(path) as tmp:
        try:
            with torch.no_grad():
                _trace_to(module, args, tmp, input_names, output_names, dynamic_axes, opset)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError, TypeError) as exc:
            raise JobFailed(f"{path}: ONNX export failed ({str(exc).splitlines()[0]})") from None
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "itkd"
        check_onnx(proto, path)
        onnx.save(proto, str(tmp))
    return path


def check_onnx(proto_or_path, name: Path) -> None:  # noqa: ANN001 - ModelProto or a path
    """``onnx.checker.check_model`` with full shape inference; a failure is a JobFailed naming the file."""
    import onnx

    try:
        onnx.checker.check_model(proto_or_path if not isinstance(proto_or_path, Path) else str(proto_or_path),
                                 full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise JobFailed(f"{name}: onnx.checker rejected the graph ({str(exc).splitlines()[0]})") from None


def require_writable_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` (and parents) or raise a one-line ItkdError."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ItkdError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    probe = out_dir / ".itkd_write_probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ItkdError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None
    return out_dir
