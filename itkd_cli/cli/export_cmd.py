"""`itkd export --onnx`: our checkpoint -> standard ONNX, verified in onnxruntime on real frames."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import ForceOpt, JsonOpt, console, emit_json, handle_errors, result as show_result, say
from itkd_cli.core.errors import ItkdError


def _show(result) -> None:  # noqa: ANN001 - ExportResult
    """Verification table per frame (outputs with their shape and abs differences), then latency."""
    for r in result.reports:
        table = Table(title=f"{r.frame.label} - {r.frame.pillars} pillars/voxels")
        for col in ("output", "shape", "max |diff|", "mean |diff|"):
            table.add_column(col)
        for o in r.outputs:
            table.add_row(o.name, str(list(o.ort_shape)), f"{o.max_abs:.2e}", f"{o.mean_abs:.2e}")
        console.print(table)
        d = r.decoded
        say(f"decoded boxes: PyTorch {d.torch_count}, onnxruntime {d.ort_count}, max score diff "
            f"{d.max_score_diff:.2e}, max box diff {d.max_box_diff:.2e} ({d.tie_ambiguous} tie-ambiguous)")
    lat = result.latency
    say(f"latency (median, {lat.runs} runs, load {lat.load:.1f}): PyTorch eager {lat.torch_ms:.1f} ms, "
        f"onnxruntime [{lat.provider}] {lat.ort_ms:.1f} ms ({lat.speedup:.2f}x)")


def register(app: typer.Typer) -> None:
    """Add the top-level `export` command."""

    @app.command("export")
    @handle_errors
    def export(
        checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Our checkpoint (.pth/.safetensors; holds its recipe)."),
        onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the only format so far; required)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: beside the checkpoint)."),
        opset: Optional[int] = typer.Option(None, "--opset", min=11, help="ONNX opset (default: recipe export.opset)."),
        atol: Optional[float] = typer.Option(None, "--atol", min=0.0, help="Max |PyTorch - onnxruntime| allowed (default: recipe export.atol)."),
        with_decode: Optional[bool] = typer.Option(None, "--with-decode/--no-decode", help="Top-K decoding in the graph (boxes, scores, labels; no NMS)."),
        data_root: Optional[str] = typer.Option(None, "--data-root", help="Dataset root of the verification frames (default: the recipe's)."),
        version: Optional[str] = typer.Option(None, "--version", help="Dataset version folder (default: the recipe's)."),
        split: Optional[str] = typer.Option(None, "--split", help="Split of the verification frames (default: the recipe's val split)."),
        sets: List[str] = typer.Option([], "--set", help="Override a dataset field, e.g. dataset.cache_dir=DIR (repeatable)."),
        force: bool = ForceOpt,
        json_out: bool = JsonOpt,
    ) -> None:
        """Export a checkpoint to ONNX and verify it against PyTorch on two real frames.

        Pillar models become one graph (pillars -> head maps); voxel models export the dense part
        (BEV map -> neck -> heads) and the sparse encoder stays outside (see the model card).
        A difference above --atol exits 1 (the .onnx is kept); bad input exits 2.
        """
        from itkd_cli.core.run_dir import claim_file, locked
        from itkd_cli.export.onnx_file import require_writable_dir
        from itkd_cli.pipeline.export_run import export_checkpoint

        if not onnx:
            raise ItkdError("export: choose a format: --onnx", hint="itkd export --onnx --checkpoint C")
        out_dir = out or checkpoint.parent
        claim_file(out_dir / f"{checkpoint.stem}.onnx", force=force)
        require_writable_dir(out_dir)
        with locked(out_dir, "itkd export", f".{checkpoint.stem}.onnx.lock"):
            result = export_checkpoint(checkpoint, out_dir, opset=opset, atol=atol, with_decode=with_decode,
                                       data_root=data_root, version=version, split=split, overrides=sets,
                                       progress=say)
        if result.graph == "voxel_dense":
            say("[yellow]note:[/] only the dense part (BEV map -> neck -> heads) is in the ONNX graph; the sparse "
                "3D encoder needs an spconv/TensorRT plugin or a CUDA-CenterPoint-like runtime; input 'bev' "
                "(1, C, H, W) = HeightCompression output. See the deployment note in the model card.")
        if json_out:
            emit_json(result.to_dict())
        else:
            _show(result)
        show_result(f"[green]verified[/] {result.onnx} (model card {result.card})")
