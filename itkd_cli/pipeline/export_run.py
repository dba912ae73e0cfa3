"""`export_checkpoint`: load our checkpoint -> sample real verification frames -> ONNX export + parity + card.

The one place that joins the data stage (frames) to the export stage, for `itkd export` and `itkd demo`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

from itkd_cli.data.frames import sample_frames
from itkd_cli.export.api import ExportResult, export_onnx, load_for_export

VERIFY_FRAMES = 2


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, opset: Optional[int] = None,
                      atol: Optional[float] = None, with_decode: Optional[bool] = None,
                      data_root: Optional[str] = None, version: Optional[str] = None, split: Optional[str] = None,
                      overrides: Sequence[str] = (), latency_runs: int = 5,
                      progress: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export our checkpoint to ONNX, verify it on two real frames, write the model card.

    Args:
        checkpoint: our .pth / .safetensors (the recipe of THIS network is inside).
        out_dir: folder for ``<stem>.onnx`` and ``<stem>.model_card.md`` (checked before anything heavy).
        opset, atol, with_decode: default to the stored recipe's ``export`` section.
        data_root, version, split: verification frames (default: the recipe's dataset, val split).
        overrides: extra ``dataset.key=value`` settings (e.g. dataset.cache_dir, dataset.sweeps).
        latency_runs: timed forwards per runtime for the model card's median latency (>= 1).
        progress: status-line callback.

    Raises:
        ItkdError: bad checkpoint, dataset or out folder (exit 2).
        JobFailed: export, checker or parity failure (exit 1); a written .onnx is kept and named.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    model, recipe, role = load_for_export(checkpoint, data_root, version, overrides, out_dir=out_dir)
    split = split or recipe.dataset.val_split
    progress(f"reading {VERIFY_FRAMES} frames of {recipe.dataset.root} / {split}")
    frames = sample_frames(recipe, split, count=VERIFY_FRAMES)
    return export_onnx(checkpoint, model, recipe, role, frames, out_dir, opset=opset, atol=atol,
                       with_decode=with_decode, latency_runs=latency_runs, progress=progress)
