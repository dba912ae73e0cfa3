"""`generate()`: the synthetic world written as a nuScenes dataset, atomically, reusable.

The dataset is built in a hidden folder beside `out` and renamed onto it at the end, so a killed run
never leaves a half-written dataset; the next run removes the staging folder a SIGKILL left behind
(staging.py). A marker file records the arguments: the same call again finds the finished folder and
reuses it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.waymo_env import waymo_python
from itkd_cli.data.synth import staging
from itkd_cli.data.synth.lidar import Lidar
from itkd_cli.data.synth.presets import Preset, get_preset
from itkd_cli.data.synth.scene import SceneRenderer, sweep_times
from itkd_cli.data.synth.waymo_writer import render_waymo
from itkd_cli.data.synth.writer import CHANNEL, VERSION, static_tables, token, write_tables

MARKER = ".itkd-synth.json"
FORMAT = 1  # bump when the generator's output changes for the same arguments
# Custom split names: the devkit treats 'train'/'val' as the official nuScenes scene lists.
TRAIN_SPLIT, VAL_SPLIT = "synth_train", "synth_val"
# The scenes of --unlabeled-scenes: written like the others, without annotations (a dataset.unlabeled pool).
UNLABELED_SPLIT = "synth_unlabeled"
LAYOUTS = ("nuscenes", "waymo")

Progress = Callable[[int, int], None]


def _resolve(preset: str, scenes: Optional[int], frames: Optional[int], seed: int,
             layout: str = "nuscenes", unlabeled_scenes: int = 0) -> tuple[Preset, dict]:
    """Check the arguments and return the preset and the full argument record."""
    if layout not in LAYOUTS:
        raise ItkdError(f"--format {layout}: expected one of {', '.join(LAYOUTS)}")
    p = get_preset(preset)
    scenes = p.scenes if scenes is None else scenes
    frames = p.frames if frames is None else frames
    if scenes < 2:
        raise ItkdError(f"--scenes: {scenes} is too few", hint="at least 2 (one for training, one for validation)")
    if frames < 1:
        raise ItkdError(f"--frames: {frames} must be at least 1")
    if seed < 0:
        raise ItkdError(f"--seed: {seed} must be >= 0")
    if unlabeled_scenes < 0:
        raise ItkdError(f"--unlabeled-scenes: {unlabeled_scenes} must be >= 0")
    val = min(scenes - 1, max(1, round(scenes * p.val_scenes / p.scenes)))
    args = {"format": FORMAT, "preset": p.name, "scenes": scenes, "frames": frames, "seed": seed, "val_scenes": val}
    # Only a Waymo world records its layout (and only a world with unlabeled scenes their count), so that
    # worlds written before these arguments existed stay reusable.
    if unlabeled_scenes:
        args["unlabeled_scenes"] = unlabeled_scenes
    return p, args if layout == "nuscenes" else {**args, "layout": layout}


def _describe(args: object) -> str:
    """The flags that reproduce a stored argument record."""
    if not isinstance(args, dict):
        return "unknown"
    flags = " ".join(f"--{k} {args[k]}" for k in ("preset", "scenes", "frames", "seed") if k in args)
    if args.get("unlabeled_scenes"):
        flags += f" --unlabeled-scenes {args['unlabeled_scenes']}"
    flags += f" --format {args.get('layout', 'nuscenes')}"
    return f"{flags}, generator format {args.get('format')}"


def _existing(out: Path, args: dict) -> Optional[dict]:
    """The stored summary if `out` is a finished dataset of the same arguments; None if `out` is free.

    Raises:
        ItkdError: `out` is a file, a non-empty foreign folder, or a synth dataset of other arguments.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ItkdError(f"{out}: exists and is not a folder", hint="choose another --out")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise ItkdError(f"{out}: folder is not empty and holds no itkd synthetic dataset",
                            hint="choose a new or empty --out folder")
        return None
    try:
        stored = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ItkdError(f"{marker}: unreadable marker ({exc})", hint=f"delete {out} and run again") from None
    if stored.get("args") != args:
        raise ItkdError(f"{out}: holds a synthetic dataset made with other settings ({_describe(stored.get('args'))})",
                        hint=f"choose another --out, repeat those settings, or delete {out}")
    return stored["summary"]


def _render_all(tmp: Path, p: Preset, args: dict, progress: Optional[Progress]) -> dict:
    """Render every scene into `tmp` and write the tables; returns the summary."""
    for folder in ("samples", "sweeps"):
        (tmp / folder / CHANNEL).mkdir(parents=True)
    lidar = Lidar(p)
    renderer = SceneRenderer(tmp, p, args["frames"], args["seed"], lidar)
    tables = {**static_tables(), "log": [], "sample": [], "sample_data": [], "ego_pose": [],
              "sample_annotation": [], "instance": [], "scene": []}
    unlabeled = args.get("unlabeled_scenes", 0)
    total = (args["scenes"] + unlabeled) * len(sweep_times(args["frames"], p.sweeps_between))
    done = [0]

    def tick(_key: bool) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    stats = {"keyframes": 0, "sweeps": 0, "points": 0, "annotations": 0}
    names = [f"scene-{i + 1:04d}" for i in range(args["scenes"] + unlabeled)]
    unlabeled_frames = 0
    for i, name in enumerate(names):  # scene i is seeded by (seed, i): unlabeled scenes leave the others as they were
        records, scene_stats = renderer.render(i, name, tick)
        if i >= args["scenes"]:  # an unlabeled scene: every sweep written, no annotation, no instance
            records = {**records, "sample_annotation": [], "instance": []}
            unlabeled_frames += scene_stats["keyframes"] + scene_stats["sweeps"]
        else:
            for k in stats:
                stats[k] += scene_stats[k]
        for table, rows in records.items():
            tables[table] += rows
    tables["map"] = [{"token": token(args["seed"], "map"), "log_tokens": [r["token"] for r in tables["log"]],
                      "category": "semantic_prior", "filename": ""}]
    n_val, labeled = args["val_scenes"], names[:args["scenes"]]
    splits = {TRAIN_SPLIT: labeled[:-n_val], VAL_SPLIT: labeled[-n_val:]}
    if unlabeled:
        splits[UNLABELED_SPLIT] = names[args["scenes"]:]
    write_tables(tmp / VERSION, tables, splits)
    summary = {"version": VERSION, "preset": p.name, "seed": args["seed"], "scenes": args["scenes"],
               "frames": args["frames"], "keyframes": stats["keyframes"], "sweeps": stats["sweeps"],
               "annotations": stats["annotations"],
               "points_per_keyframe": round(stats["points"] / max(stats["keyframes"], 1), 1),
               "splits": {k: len(v) for k, v in splits.items()}}
    if unlabeled:  # counts above are the labeled scenes'
        summary.update(unlabeled_scenes=unlabeled, unlabeled_frames=unlabeled_frames)
    return summary


def generate(out: str | Path, scenes: Optional[int] = None, frames: Optional[int] = None, seed: int = 0,
             preset: str = "default", progress: Optional[Progress] = None, layout: str = "nuscenes",
             unlabeled_scenes: int = 0) -> dict:
    """Write the synthetic world as a nuScenes dataset (version folder `v1.0-synth`) under `out`, or with
    ``layout="waymo"`` as Waymo segments (`training/` and `validation/` TFRecords, written by the Waymo venv).

    Args:
        out: Dataset root to create (must be absent, empty, or a finished run of the same arguments).
        scenes: Number of scenes (default: the preset's).
        frames: Keyframes per scene (default: the preset's).
        seed: Random seed; the same seed gives byte-identical files.
        preset: Preset name (see presets.py).
        progress: Optional callable(sweeps_done, sweeps_total).
        layout: "nuscenes" or "waymo".
        unlabeled_scenes: extra scenes (after the others, seeded by their index like them: the labeled scenes
            are byte-identical to a world without them) written without annotations: split ``UNLABELED_SPLIT``
            of splits.json (Waymo: segments in `unlabeled/`, frames without labels).

    Returns:
        Summary dict: out, version, counts, points per keyframe, split sizes, seconds, reused, the staging
        folders of killed runs it removed (cleared_staging) and staging-like ones it left alone (unknown_staging).

    Raises:
        ItkdError: bad arguments, `out` is taken by something else, or writing failed (nothing is kept).
    """
    p, args = _resolve(preset, scenes, frames, seed, layout, unlabeled_scenes)
    if layout == "waymo":
        waymo_python()  # no Waymo venv: one line naming the command that makes it, before any rendering
    out = Path(out)
    stored = _existing(out, args)
    # before the reuse shortcut too: a killed run's staging folder goes whatever this run does
    cleared, unknown = staging.clear_leftovers(out)
    extra = {"cleared_staging": cleared, "unknown_staging": unknown}
    if stored is not None:
        return {**stored, "out": str(out), "seconds": 0.0, "reused": True, **extra}
    start = time.perf_counter()
    try:
        tmp = staging.make(out, args)
    except OSError as exc:
        raise ItkdError(f"{out}: cannot write here ({exc.strerror or exc})") from None
    try:
        if layout == "waymo":
            summary = render_waymo(tmp, p, args, progress)
        else:
            summary = _render_all(tmp, p, args, progress)
        (tmp / MARKER).write_text(json.dumps({"args": args, "summary": summary}, indent=2) + "\n")
        staging.finish(tmp, out)
    except OSError as exc:  # disk full, quota, or `out` filled by someone else meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        raise ItkdError(f"{out}: writing the dataset failed ({exc.strerror or exc}); nothing was kept",
                        hint="free space or choose another --out, then run `itkd data synth` again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "out": str(out), "seconds": round(time.perf_counter() - start, 2), "reused": False, **extra}
