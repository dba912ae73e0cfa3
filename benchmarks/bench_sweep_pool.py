"""Size, load time and memory of the `sweeps` pool at nuScenes scale: the sweep table against one info per frame.

Usage:
    python benchmarks/bench_sweep_pool.py [--frames 270000] [--sweeps 10] [--out /tmp/sweep_pool]

Builds a ``SweepTable`` shaped like v1.0-trainval's non-key LIDAR_TOP sweeps (``--frames`` frames, 20 Hz, scenes of
390 sweeps, ``--sweeps`` - 1 previous sweeps each, nuScenes-length paths and tokens, random poses), then stores the
same pool twice: as the table's cache (.npz, what `itkd compress` writes now) and as the list of info dicts its
frames read as (JSON, what the cache held before). Each is loaded in a fresh process, which reports the load time
and how much its resident memory grew. Prints one table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from itkd_cli.data.sweep_pool import SweepTable

SCENE_SWEEPS = 390  # a 20 s nuScenes scene at 20 Hz (its 40 keyframes among them)
META = {"bench": True}


def rss_kib() -> int:
    """Resident memory of this process now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_table(frames: int, sweeps: int, seed: int = 0) -> SweepTable:
    """A table of ``frames`` pool frames over whole scenes; every LiDAR row of a scene is stored once."""
    rng = np.random.default_rng(seed)
    scenes = -(-frames // (SCENE_SWEEPS * 9 // 10))
    rows = scenes * SCENE_SWEEPS
    tokens = np.array([f"{rng.integers(1 << 63):032x}".encode() for _ in range(rows)], dtype=bytes)
    stamp = 1532402927814384 + np.arange(rows, dtype=np.int64) * 50_000
    paths = np.array([f"sweeps/LIDAR_TOP/n015-2018-07-24-11-22-45+0800__LIDAR_TOP__{t}.pcd.bin".encode()
                      for t in stamp], dtype=bytes)
    poses = np.tile(np.eye(4), (rows, 1, 1))
    poses[:, :3, :3] += rng.normal(0, 0.01, (rows, 3, 3))
    poses[:, :3, 3] = rng.normal(0, 500, (rows, 3))
    within = np.arange(rows) % SCENE_SWEEPS
    key = np.flatnonzero(within % 10 != 0)[:frames]  # 1 row in 10 is a keyframe, the rest pool frames
    count = sweeps - 1
    previous = key[:, None] - np.arange(1, count + 1)[None, :]
    previous[previous < (key - within[key])[:, None]] = -1  # no sweep before the scene's first
    return SweepTable(tokens, paths, stamp, poses, key, previous)


def load_child(kind: str, path: Path) -> dict:
    """Load ``path`` in a fresh process; its seconds and resident-memory growth."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_sweep_pool import rss_kib, META
from pathlib import Path
before = rss_kib(); t0 = time.perf_counter()
if {kind!r} == "table":
    from itkd_cli.data.sweep_pool import SweepTable
    pool = SweepTable.load(Path({str(path)!r}), META); n = len(pool); pool[n // 2]
else:
    pool = json.loads(Path({str(path)!r}).read_text()); n = len(pool); pool[n // 2]
print(json.dumps({{"seconds": time.perf_counter() - t0, "rss_mib": (rss_kib() - before) / 1024, "frames": n}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=270_000, help="pool frames (v1.0-trainval: about 270,000)")
    ap.add_argument("--sweeps", type=int, default=10, help="dataset.sweeps (each frame stacks sweeps - 1 previous)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sweep_pool"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = make_table(args.frames, args.sweeps)
    t0 = time.perf_counter()
    infos = [table[i] for i in range(len(table))]
    per_frame_us = (time.perf_counter() - t0) / len(table) * 1e6
    npz = table.save(args.out / "pool.npz", META)
    js = args.out / "pool.json"
    js.write_text(json.dumps(infos))
    del infos
    res = Table(title=f"`sweeps` pool of {len(table):,} frames, dataset.sweeps {args.sweeps}")
    for col in ("stored as", "file (MB)", "load (s)", "resident memory after load (MiB)"):
        res.add_column(col)
    for name, kind, path in (("sweep table (.npz, now)", "table", npz), ("info per frame (JSON, before)", "json", js)):
        got = load_child(kind, path)
        res.add_row(name, f"{path.stat().st_size / 1e6:,.0f}", f"{got['seconds']:.1f}", f"{got['rss_mib']:,.0f}")
    Console().print(res)
    print(f"building one frame's info from the table: {per_frame_us:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
