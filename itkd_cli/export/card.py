"""Latency measurement and the markdown model card written beside the .onnx file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from itkd_cli.export.verify import FrameReport, run_ort


@dataclass
class Latency:
    """Median wall time (ms) of one forward, PyTorch eager vs onnxruntime, same inputs."""

    torch_ms: float
    ort_ms: float
    runs: int
    threads: int
    provider: str
    load: float  # 1-minute load average when measured (other jobs on the machine inflate both timings)

    @property
    def speedup(self) -> float:
        return self.torch_ms / self.ort_ms if self.ort_ms > 0 else float("nan")


def median_ms(fn: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latency(graph: nn.Module, session: Any, inputs: Sequence[Tensor], runs: int = 5,
                    warmup: int = 1) -> Latency:
    """Median latency of the export module in eager PyTorch (no_grad) and of its onnxruntime session."""
    def eager() -> None:
        with torch.no_grad():
            graph(*inputs)

    torch_ms = median_ms(eager, runs, warmup)
    ort_ms = median_ms(lambda: run_ort(session, inputs), runs, warmup)
    return Latency(torch_ms, ort_ms, runs, torch.get_num_threads(), session.get_providers()[0],
                   os.getloadavg()[0])


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verification_markdown(reports: Sequence[FrameReport], atol: float) -> str:
    """Per frame: pillar count, each output's shapes and max/mean |diff|, then the decoded-box check."""
    parts = []
    for r in reports:
        parts.append(f"**{r.frame.label}** ({r.frame.pillars} pillars/voxels)\n")
        parts.append(_table(["output", "PyTorch shape", "onnxruntime shape", "max abs diff", "mean abs diff"],
                            [[o.name, list(o.torch_shape), list(o.ort_shape), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}"]
                             for o in r.outputs]))
        d = r.decoded
        parts.append(f"\nDecoded boxes: PyTorch {d.torch_count}, onnxruntime {d.ort_count}; max score diff "
                     f"{d.max_score_diff:.3g}, max box diff {d.max_box_diff:.3g} (relative, yaw in rad) over matched pairs; "
                     f"{d.tie_ambiguous} unmatched only through score ties, {d.unexplained} unexplained; "
                     f"tolerance atol {atol:g}, boxes {atol * 10:g}.\n")
        if any(o.name == "boxes" for o in r.outputs):
            parts.append("With in-graph top-K, `scores` is compared sorted and `boxes`/`labels` through the box "
                         "matching above (row order among equal scores is arbitrary); their rows are informative.\n")
    return "\n".join(parts)


def model_card(info: dict[str, Any], reports: Sequence[FrameReport], latency: Latency,
               meta: dict[str, str], deployment: str) -> str:
    """Markdown model card of one export.

    Args:
        info: checkpoint, onnx path, role, params, macs, opset, atol, with_decode, graph kind.
        reports: verification per frame.
        latency: eager vs onnxruntime timing on this machine.
        meta: the metadata_props written into the file.
        deployment: deployment note (what runs outside the graph).
    """
    inputs = json.loads(meta["inputs"])
    outputs = json.loads(meta["outputs"])
    dense = ("backbone_2d", "dense_head") if meta["itkd.graph"] == "voxel_dense" else tuple(info["macs"])[:-1]
    in_graph = sum(info["macs"][k] for k in dense)
    stages = ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in info["macs"].items() if k != "total")
    lines = [
        f"# Model card: {info['onnx']}",
        "",
        f"- source checkpoint: `{info['checkpoint']}` (role {info['role']})",
        f"- graph: {meta['itkd.graph']} (opset {info['opset']}, decode in graph: {info['with_decode']})",
        f"- parameters: {info['params']:,} (in the graph: {info['graph_params']:,})",
        f"- MACs of the first verification frame: {info['macs']['total'] / 1e9:.3f} G ({stages}); "
        f"in the graph: {in_graph / 1e9:.3f} G",
        f"- classes per task: {meta['tasks']}",
        f"- voxel size {meta['voxel_size']} m, point range {meta['point_range']} m, feature map stride "
        f"{meta['feature_map_stride']}, head map (H, W) {meta['head_map_size']}",
        "",
        "## Latency on this machine (median, one frame)",
        "",
        _table(["runtime", "ms"], [[f"PyTorch eager ({latency.threads} threads)", f"{latency.torch_ms:.1f}"],
                                   [f"onnxruntime ({latency.provider})", f"{latency.ort_ms:.1f}"]]),
        f"\nonnxruntime / eager speed-up: {latency.speedup:.2f}x over {latency.runs} runs "
        f"({platform.machine()}, {os.cpu_count()} CPUs, load average {latency.load:.1f} while measuring).",
        "",
        "## Inputs",
        "",
        _table(["name", "shape", "dtype", "meaning"],
               [[k, v["shape"], v["dtype"], v["meaning"]] for k, v in inputs.items()]),
        "",
        "## Outputs",
        "",
        _table(["name", "shape", "meaning"], [[k, v["shape"], v["meaning"]] for k, v in outputs.items()]),
        "",
        f"Box code: {meta['box_code']}",
        "",
        "## Verification (PyTorch vs onnxruntime, real frames)",
        "",
        verification_markdown(reports, info["atol"]),
        "## Metadata in the file (onnx metadata_props)",
        "",
        ", ".join(f"`{k}`" for k in meta),
        "",
        "## Deployment note",
        "",
        deployment,
        "",
    ]
    return "\n".join(lines)
