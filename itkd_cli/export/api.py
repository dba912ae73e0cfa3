"""`export_onnx`: checkpoint -> .onnx (+ metadata) -> parity on real frames -> model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_text
from itkd_cli.export.card import Latency, measure_latency, model_card
from itkd_cli.export.metadata import DECODE_NOTE, SPARSE_NOTE, build_metadata
from itkd_cli.export.onnx_file import require_writable_dir, write_onnx
from itkd_cli.export.verify import Frame, FrameReport, graph_inputs, load_frames, ort_session, verify_onnx
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


def _frames(model: CenterPoint, recipe: Recipe, split: str) -> list[tuple[Frame, Batch]]:
    return [(Frame(label, int(batch.voxels.shape[0]), graph_inputs(model, recipe, batch)), batch)
            for label, batch in load_frames(recipe, split, count=2)]


def export_onnx(checkpoint: str | Path, out_dir: str | Path, opset: Optional[int] = None, atol: Optional[float] = None,
                with_decode: Optional[bool] = None, data_root: Optional[str] = None, version: Optional[str] = None,
                split: Optional[str] = None, overrides: Sequence[str] = (), latency_runs: int = 5,
                progress: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export our checkpoint to ONNX, verify it on two real frames, write the model card.

    Args:
        checkpoint: our .pth / .safetensors (the recipe of THIS network is inside).
        out_dir: folder for ``<stem>.onnx`` and ``<stem>.model_card.md``.
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
    if not checkpoint.is_file():
        raise ItkdError(f"{checkpoint}: no such checkpoint file")
    require_writable_dir(out_dir)
    model, recipe, role = load_checkpoint_model(checkpoint)
    recipe = with_dataset(recipe, data_root, version, overrides)
    cfg = recipe.export
    opset = cfg.opset if opset is None else opset
    atol = cfg.atol if atol is None else atol
    with_decode = cfg.with_decode if with_decode is None else with_decode
    split = split or recipe.dataset.val_split
    progress(f"reading 2 frames of {recipe.dataset.root} / {split}")
    loaded = _frames(model, recipe, split)
    frames = [f for f, _ in loaded]
    graph = build_graph(model, recipe.model, recipe.dataset.class_names, with_decode)
    pillar = recipe.model.vfe.kind == "pillar"
    names = output_names(recipe.model, with_decode)
    inputs = PILLAR_INPUTS if pillar else DENSE_INPUTS
    dyn = {n: {0: "P"} for n in PILLAR_INPUTS} if pillar else {}
    meta = build_metadata(recipe, with_decode)
    path = out_dir / f"{checkpoint.stem}.onnx"
    progress(f"exporting {'pillar model' if pillar else 'dense part (BEV -> neck -> heads)'} to {path}")
    write_onnx(graph, frames[0].inputs, path, inputs, names, dyn, opset, meta)
    progress("verifying PyTorch vs onnxruntime")
    session = ort_session(path)
    reports = verify_onnx(path, graph, frames, names, recipe, with_decode, atol, session)
    latency = measure_latency(graph, session, frames[0].inputs, runs=max(1, latency_runs),
                              warmup=1 if latency_runs > 1 else 0)
    macs = complexity(model, loaded[0][1])
    deployment = (PILLAR_NOTE if pillar else SPARSE_NOTE) + (" " + DECODE_NOTE if with_decode else "")
    info = {"checkpoint": checkpoint, "onnx": path, "role": role, "opset": opset, "atol": atol,
            "with_decode": with_decode, "params": sum(p.numel() for p in model.parameters()),
            "graph_params": sum(p.numel() for p in graph.parameters()), "macs": macs,
            "outputs": names, "inputs": list(inputs)}
    card = write_text(out_dir / f"{checkpoint.stem}.model_card.md",
                      model_card(info, reports, latency, meta, deployment))
    return ExportResult(path, card, meta["itkd.graph"], reports, latency, deployment, info)
