"""PyTorch eager vs onnxruntime latency of exported pillar CenterPoints on 2 CPU threads.

Usage: .venv/bin/python benchmarks/bench_export.py [--recipes synth-pillar centerpoint-pillar-waymo]
       [--points 120000] [--repeats 5] [--threads 2] [--json out.json]
Teacher and its 1/4 student (derive_student(cfg, 0.25, 'neck')) of each recipe, random weights, one
LiDAR-like frame voxelised with the recipe's grid (models/complexity.build_frame). The ONNX graph is the
one `itkd export --onnx` writes (pillars -> head maps). onnxruntime is timed at graph optimisation level
ALL and BASIC with intra-op threads = --threads; PyTorch eager with torch.set_num_threads(--threads).
The 1-minute load average is printed: other jobs on the machine inflate every number.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from itkd_cli.export.card import median_ms
from itkd_cli.export.onnx_file import write_onnx
from itkd_cli.export.verify import run_ort
from itkd_cli.export.wrappers import PILLAR_INPUTS, build_graph, output_names
from itkd_cli.models import build_model, derive_student
from itkd_cli.models.complexity import build_frame
from itkd_cli.recipe import load_recipe

VARIANTS = (("teacher", None), ("1/4 neck", 0.25))


def _session(path: Path, threads: int, level: str):  # noqa: ANN202 - onnxruntime type
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def bench_one(recipe: str, name: str, ratio: float | None, points: int, repeats: int, threads: int,
              tmp: Path) -> dict:
    """Export one variant and time eager vs onnxruntime (levels ALL and BASIC) on the same inputs."""
    cfg = load_recipe(recipe)
    model_cfg = cfg.model if ratio is None else derive_student(cfg.model, ratio, "neck")
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    frame = build_frame(model_cfg, points, seed=0)
    inputs = (frame.voxels, frame.num_points, frame.coords)
    graph = build_graph(model, model_cfg, cfg.dataset.class_names, with_decode=False)
    path = tmp / f"{recipe}-{name.replace('/', '_').replace(' ', '_')}.onnx"
    write_onnx(graph, inputs, path, PILLAR_INPUTS, output_names(model_cfg, False),
               {n: {0: "P"} for n in PILLAR_INPUTS}, 17, {})
    warm = 1

    def eager() -> None:
        with torch.no_grad():
            graph(*inputs)

    row = {"recipe": recipe, "variant": name, "pillars": int(frame.voxels.shape[0]),
           "params": sum(p.numel() for p in model.parameters()),
           "torch_ms": median_ms(eager, repeats, warm)}
    for level in ("ALL", "BASIC"):
        sess = _session(path, threads, level)
        row[f"ort_{level.lower()}_ms"] = median_ms(lambda s=sess: run_ort(s, inputs), repeats, warm)
    row["speedup"] = row["torch_ms"] / row["ort_all_ms"]
    row["load"] = os.getloadavg()[0]
    print(f"{recipe} {name}: eager {row['torch_ms']:.0f} ms, ort {row['ort_all_ms']:.0f} ms "
          f"({row['speedup']:.2f}x), load {row['load']:.1f}", file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["synth-pillar", "centerpoint-pillar-waymo"])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes:
            for name, ratio in VARIANTS:
                rows.append(bench_one(recipe, name, ratio, args.points, args.repeats, args.threads, Path(tmp)))
    table = Table(title=f"median latency, {args.threads} threads, {args.repeats} runs (ms)")
    for col in ("recipe", "variant", "params", "pillars", "PyTorch eager", "ORT all", "ORT basic", "speed-up", "load"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["recipe"], r["variant"], f"{r['params']:,}", str(r["pillars"]), f"{r['torch_ms']:.0f}",
                      f"{r['ort_all_ms']:.0f}", f"{r['ort_basic_ms']:.0f}", f"{r['speedup']:.2f}x", f"{r['load']:.1f}")
    Console(width=160).print(table)
    if args.json:
        from itkd_cli.core.io import write_json

        write_json(args.json, rows)


if __name__ == "__main__":
    main()
