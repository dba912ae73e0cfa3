"""`load_for_export` (checkpoint -> model, recipe) and `export_onnx` (model + real frames -> .onnx (+ metadata)
-> parity -> model card + ``<stem>.export.json``, the verification figures). The frames come from the caller (``itkd_cli.pipeline.export_run``): export reads no data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json, write_text
from itkd_cli.export.card import Latency, measure_latency, model_card
from itkd_cli.export.metadata import DECODE_NOTE, SPARSE_NOTE, build_metadata
from itkd_cli.export.onnx_file import require_writable_dir, write_onnx
from itkd_cli.export.verify import Frame, FrameReport, graph_inputs, ort_session, verify_onnx
from itkd_cli.export.wrappers import DENSE_INPUTS, PILLAR_INPUTS, build_graph, output_names
from itkd_cli.core.types import Batch
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.recipe.schema import Recipe

PILLAR_NOTE = ("The whole detector is in the graph: feed one frame's pillars (voxelised as the recipe's grid "
               "says: voxel_size, point_range, max_points_per_voxel; features x, y, z, intensity, time lag) and "
               "read the raw head maps. Decoding (box code above), score threshold and per-task NMS run outside.")


@dataclass
class ExportResult:
    """What ``export_onnx`` produced."""

    onnx: Path
    card: Path
    graph: str  # pillar_full | voxel_dense
    reports: list[FrameReport]
    latency: Latency
    deployment: str
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        frames = [{"frame": r.frame.label, "pillars": r.frame.pillars,
                   "outputs": {o.name: {"shape": list(o.ort_shape), "max_abs": o.max_abs, "mean_abs": o.mean_abs}
                               for o in r.outputs},
                   "decoded": vars(r.decoded)} for r in self.reports]
        return {"onnx": str(self.onnx), "card": str(self.card), "graph": self.graph, "verified": True,
                "frames": frames, "latency_ms": {"torch_eager": self.latency.torch_ms, "onnxruntime": self.latency.ort_ms,
                                                 "provider": self.latency.provider, "speedup": self.latency.speedup},
                "deployment": self.deployment, **{k: v for k, v in self.info.items() if k not in ("onnx", "checkpoint")},
                "checkpoint": str(self.info["checkpoint"])}


def load_checkpoint_model(checkpoint: Path) -> tuple[CenterPoint, Recipe, str]:
    """Our checkpoint -> (model in eval mode with its weights, its stored recipe, role)."""
    from itkd_cli.models.checkpoint import load_ours_model

    model, recipe, raw = load_ours_model(checkpoint)
    return model, recipe, str(raw.meta.get("role", "?"))


def with_dataset(recipe: Recipe, data_root: Optional[str], version: Optional[str],
                 overrides: Sequence[str] = ()) -> Recipe:
    """The recipe with its dataset pointed elsewhere (only ``dataset.*`` may be overridden here).

    Raises:
        ItkdError: an override outside ``dataset.`` (the weights fix the model) or an invalid value.
    """
    from itkd_cli.recipe import recipe_from_dict
    from itkd_cli.recipe.load import apply_overrides

    bad = [o for o in overrides if not o.strip().startswith("dataset.")]
    if bad:
        raise ItkdError(f"--set {bad[0]}: export may only override dataset.* (the checkpoint fixes the model)")
    data = recipe.model_dump(mode="json")
    extra = [*overrides, *([f"dataset.root={data_root}"] if data_root else []),
             *([f"dataset.version={version}"] if version else [])]
    return recipe_from_dict(apply_overrides(data, extra), source="export --set/--data-root/--version")


@torch.no_grad()
def complexity(model: CenterPoint, batch: Batch) -> dict[str, int]:
    """MACs per stage (and ``total``) of one real frame, from ``itkd_cli.models.complexity``."""
    from itkd_cli.models.complexity import Frame as CxFrame
    from itkd_cli.models.complexity import count_macs

    frame = CxFrame(batch.voxels, batch.num_points, batch.coords, int(batch.num_points.sum()))
    macs = count_macs(model, frame)
    return {**macs, "total": sum(macs.values())}


def load_for_export(checkpoint: str | Path, data_root: Optional[str] = None, version: Optional[str] = None,
                    overrides: Sequence[str] = (),
                    out_dir: str | Path | None = None) -> tuple[CenterPoint, Recipe, str]:
    """Our checkpoint -> (model in eval mode, its recipe with the dataset pointed as asked, role).

    Args:
        checkpoint: our .pth / .safetensors (the recipe of THIS network is inside).
        data_root, version, overrides: where the verification frames are (see ``with_dataset``).
        out_dir: when given, created and checked writable before the checkpoint is loaded.

    Raises:
        ItkdError: no such checkpoint, an unwritable out folder, a bad checkpoint or dataset override.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ItkdError(f"{checkpoint}: no such checkpoint file")
    if out_dir is not None:
        require_writable_dir(Path(out_dir))
    model, recipe, role = load_checkpoint_model(checkpoint)
    return model, with_dataset(recipe, data_root, version, overrides), role


def graph_frames(model: CenterPoint, recipe: Recipe, frames: Sequence[tuple[str, Batch]]) -> list[Frame]:
    """(label, one-frame Batch) pairs -> verification Frames holding the export graph's inputs."""
    return [Frame(label, int(batch.voxels.shape[0]), graph_inputs(model, recipe, batch)) for label, batch in frames]


def export_onnx(checkpoint: str | Path, model: CenterPoint, recipe: Recipe, role: str,
                frames: Sequence[tuple[str, Batch]], out_dir: str | Path, opset: Optional[int] = None,
                atol: Optional[float] = None, with_decode: Optional[bool] = None, latency_runs: int = 5,
                progress: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export a loaded checkpoint to ONNX, verify it on the given real frames, write the model card.

    Args:
        checkpoint: the file ``model`` came from (names the outputs; recorded in the card).
        model, recipe, role: as ``load_for_export`` returns them.
        frames: (label, one-frame Batch) verification frames, e.g. ``itkd_cli.data.frames.sample_frames``;
            the first one traces the graph.
        out_dir: folder for ``<stem>.onnx`` and ``<stem>.model_card.md``.
        opset, atol, with_decode: default to the recipe's ``export`` section.
        latency_runs: timed forwards per runtime for the model card's median latency (>= 1).
        progress: status-line callback.

    Raises:
        ItkdError: bad out folder or no frames (exit 2).
        JobFailed: export, checker or parity failure (exit 1); a written .onnx is kept and named.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    require_writable_dir(out_dir)
    if not frames:
        raise ItkdError(f"{checkpoint}: export needs at least one verification frame")
    cfg = recipe.export
    opset = cfg.opset if opset is None else opset
    atol = cfg.atol if atol is None else atol
    with_decode = cfg.with_decode if with_decode is None else with_decode
    inputs_of = graph_frames(model, recipe, frames)
    graph = build_graph(model, recipe.model, recipe.dataset.class_names, with_decode)
    pillar = recipe.model.vfe.kind == "pillar"
    names = output_names(recipe.model, with_decode)
    inputs = PILLAR_INPUTS if pillar else DENSE_INPUTS
    dyn = {n: {0: "P"} for n in PILLAR_INPUTS} if pillar else {}
    meta = build_metadata(recipe, with_decode)
    path = out_dir / f"{checkpoint.stem}.onnx"
    progress(f"exporting {'pillar model' if pillar else 'dense part (BEV -> neck -> heads)'} to {path}")
    write_onnx(graph, inputs_of[0].inputs, path, inputs, names, dyn, opset, meta)
    progress("verifying PyTorch vs onnxruntime")
    session = ort_session(path)
    reports = verify_onnx(path, graph, inputs_of, names, recipe, with_decode, atol, session)
    latency = measure_latency(graph, session, inputs_of[0].inputs, runs=max(1, latency_runs),
                              warmup=1 if latency_runs > 1 else 0)
    macs = complexity(model, frames[0][1])
    deployment = (PILLAR_NOTE if pillar else SPARSE_NOTE) + (" " + DECODE_NOTE if with_decode else "")
    info = {"checkpoint": checkpoint, "onnx": path, "role": role, "opset": opset, "atol": atol,
            "with_decode": with_decode, "params": sum(p.numel() for p in model.parameters()),
            "graph_params": sum(p.numel() for p in graph.parameters()), "macs": macs,
            "outputs": names, "inputs": list(inputs)}
    card = write_text(out_dir / f"{checkpoint.stem}.model_card.md",
                      model_card(info, reports, latency, meta, deployment))
    result = ExportResult(path, card, meta["itkd.graph"], reports, latency, deployment, info)
    write_json(out_dir / f"{checkpoint.stem}.export.json", result.to_dict())  # the figures, for `itkd report`
    return result
