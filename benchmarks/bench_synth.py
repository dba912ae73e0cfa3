"""Generation speed of the synthetic world on one core.

Run: `.venv/bin/python benchmarks/bench_synth.py [--presets small default] [--seed 0]`
Prints: preset, keyframes, sweeps, wall and CPU seconds, keyframes/s (wall and CPU), points per keyframe.
On a shared machine the CPU columns are the fair measure (wall time includes waiting for the core).
Each preset is generated into a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import os

# One core: pin BLAS/OpenMP pools before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from itkd_cli.data.synth import PRESETS, generate  # noqa: E402


def bench(preset: str, seed: int) -> dict:
    """Generate one preset into a temporary folder and time it."""
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = generate(Path(tmp) / "data", preset=preset, seed=seed)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(p.stat().st_size for p in (Path(tmp) / "data").rglob("*") if p.is_file())
    return {"preset": preset, "keyframes": summary["keyframes"], "sweeps": summary["sweeps"], "wall_s": wall,
            "cpu_s": cpu, "keyframes_per_s": summary["keyframes"] / wall,
            "points_per_keyframe": summary["points_per_keyframe"], "annotations": summary["annotations"],
            "megabytes": size / 1e6}


def main() -> None:
    """Benchmark the requested presets and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = Table("preset", "keyframes", "sweeps", "wall s", "cpu s", "keyframes/s wall", "keyframes/s cpu",
                  "points/frame", "annotations", "MB", title="itkd data synth, one core")
    for preset in args.presets:
        r = bench(preset, args.seed)
        table.add_row(r["preset"], str(r["keyframes"]), str(r["sweeps"]), f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}",
                      f"{r['keyframes_per_s']:.1f}", f"{r['keyframes'] / r['cpu_s']:.1f}",
                      f"{r['points_per_keyframe']:.0f}", str(r["annotations"]),
                      f"{r['megabytes']:.0f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
