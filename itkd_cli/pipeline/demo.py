"""`itkd demo`: synthetic world -> teacher -> itKD student -> official eval -> ONNX, resumable.

Each step writes into its own folder under --out and is skipped when its result is already there AND
was made from the same inputs (recipe, upstream checkpoint bytes, schedule): re-running a killed demo
loses nothing that finished, and a changed input reruns the step, saying why, with the old result moved
aside. Every step prints the stand-alone command that does the same, so a user can re-run one step alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from itkd_cli.core.io import file_sha256, write_json
from itkd_cli.core.run_dir import aside_name
from itkd_cli.data.synth import generate
from itkd_cli.pipeline.export_run import export_checkpoint
from itkd_cli.models.checkpoint import read_checkpoint
from itkd_cli.pipeline.compress import compress, compress_recipe
from itkd_cli.pipeline.report import learned_nothing
from itkd_cli.recipe.load import load_recipe
from itkd_cli.train.train import train

Log = Callable[[str], None]


KEY = "inputs.json"  # what a step's folder was made from


def _finished_epochs(checkpoint: Path) -> int:
    """Epochs completed by the run that wrote ``checkpoint`` (0 when absent)."""
    if not checkpoint.is_file():
        return 0
    return int(read_checkpoint(checkpoint).meta.get("epoch", 0))


def recipe_sha256(recipe: Any) -> str:
    # gates judge a result without changing it: a demo folder made before gates existed is still reused
    data = recipe.model_dump(mode="json", exclude={"gates"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def keyed_folder(folder: Path, key: dict[str, Any], what: str, log: Log) -> None:
    """Make ``folder`` hold only work made from ``key``: a folder made from other inputs (or from unknown
    ones: no record) is moved aside whole, saying which inputs changed; then the key is recorded."""
    record = folder / KEY
    if folder.is_dir() and any(folder.iterdir()):
        stored = json.loads(record.read_text()) if record.is_file() else None
        if stored == key:
            return
        changed = ", ".join(k for k in key if stored is None or stored.get(k) != key[k]) if stored else "no record"
        aside = aside_name(folder)
        os.replace(folder, aside)
        log(f"      the {what} in {folder} was made from other inputs ({changed}): redoing it; "
            f"the old one is kept in {aside}")
    write_json(record, key)


def _export_once(checkpoint: Path, out_dir: Path, log: Log) -> dict[str, Any]:
    """Export + verify ``checkpoint`` unless a verified export of these very bytes is already in ``out_dir``."""
    keyed_folder(out_dir, {"checkpoint_sha256": file_sha256(checkpoint)}, "export", log)
    record = out_dir / "export.json"
    if record.is_file() and Path(json.loads(record.read_text())["onnx"]).is_file():
        data = json.loads(record.read_text())
        log(f"      reusing the verified export {data['onnx']}")
        return data
    data = export_checkpoint(checkpoint, out_dir, progress=log).to_dict()
    write_json(record, data)
    return data


def _side(report_side: dict[str, Any], exported: dict[str, Any]) -> dict[str, Any]:
    """One column of the final table: size, speed (PyTorch eager and onnxruntime) and accuracy."""
    return {"params": report_side.get("params"), "gmacs": report_side.get("gmacs"),
            "torch_ms": exported["latency_ms"]["torch_eager"], "onnxruntime_ms": exported["latency_ms"]["onnxruntime"],
            "mAP": report_side.get("mAP"), "NDS": report_side.get("NDS"), "onnx": exported["onnx"]}


def accuracy_notes(teacher_map: Optional[float], epochs: int, train_scenes: Optional[int], preset: str) -> list[str]:
    """Say so when the teacher learned nothing (e.g. preset ``small``): every mAP of the table is then ~0."""
    if not learned_nothing(teacher_map):
        return []
    advice = ("preset 'small' is a smoke test, use --preset default" if preset == "small"
              else "train longer (--teacher-epochs) or on more scenes (--scenes)")
    scenes = f" on {train_scenes} training scene(s)" if train_scenes else ""
    return [f"the teacher scored mAP {teacher_map:.4f} after {epochs} epoch(s){scenes}: too little to learn "
            f"from, so the accuracy rows compare nothing; {advice}"]


def demo_overrides(data_root: Path, teacher_epochs: Optional[int], extra: list[str]) -> list[str]:
    """Recipe overrides shared by every step: the demo's dataset folder and the epoch budget."""
    sets = [f"dataset.root={data_root}"]
    if teacher_epochs is not None:
        sets.append(f"train.epochs={teacher_epochs}")
    return sets + list(extra)


def run_demo(out: Path, *, recipe_name: str = "synth-pillar", compress_recipe_name: str = "synth-pillar-itkd-1-4",
             preset: str = "default", seed: int = 0, scenes: Optional[int] = None, frames: Optional[int] = None,
             ratio: Optional[float] = None,
             teacher_epochs: Optional[int] = None, student_epochs: Optional[int] = None,
             max_eval_frames: Optional[int] = None, extra: tuple[str, ...] = (), quiet: bool = False,
             log: Log = print) -> dict[str, Any]:
    """Run (or resume) the whole main job; returns the summary also written to ``out/demo.json``.

    The teacher trains on ``recipe_name``; the student is distilled as ``compress_recipe_name`` says (its
    ratio, method and schedule) unless ``ratio`` / ``student_epochs`` override them."""
    out = Path(out)
    data_root, teacher_dir, student_dir, export_dir = out / "data", out / "teacher", out / "student", out / "export"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    scn = f" --scenes {scenes}" if scenes else ""
    frm = f" --frames {frames}" if frames else ""
    log(f"[1/4] synthetic world   $ itkd data synth --out {data_root} --preset {preset} --seed {seed}{scn}{frm}")
    world = generate(data_root, scenes=scenes, frames=frames, seed=seed, preset=preset)
    timings["synth_s"] = time.perf_counter() - t0

    sets = demo_overrides(data_root, teacher_epochs, list(extra))
    recipe = load_recipe(recipe_name, sets)
    set_str = " ".join(f"--set {s}" for s in sets)
    teacher = teacher_dir / "last.pth"
    keyed_folder(teacher_dir, {"recipe_sha256": recipe_sha256(recipe)}, "teacher", log)
    resume = f" --resume {teacher_dir}" if teacher.is_file() else ""
    log(f"[2/4] teacher           $ itkd train --recipe {recipe_name} {set_str} --out {teacher_dir}{resume}")
    t1 = time.perf_counter()
    if _finished_epochs(teacher) >= recipe.train.epochs:
        log(f"      reusing the finished teacher {teacher}")
    else:
        train(recipe, teacher_dir, resume=teacher_dir if teacher.is_file() else None, quiet=quiet)
    timings["teacher_s"] = time.perf_counter() - t1

    # The student's schedule is the compress recipe's (or --student-epochs), never the teacher's override.
    s_sets = [s for s in sets if not s.startswith("train.epochs=")]
    s_sets += [f"train.epochs={student_epochs}"] if student_epochs is not None else []
    s_set_str = "".join(f" --set {s}" for s in s_sets)
    ratio_flag = f" --ratio {ratio}" if ratio is not None else ""
    c_recipe = compress_recipe(teacher, compress_recipe_name, s_sets, ratio, None, None)
    keyed_folder(student_dir, {"recipe_sha256": recipe_sha256(c_recipe), "teacher_sha256": file_sha256(teacher)},
                 "student", log)
    interrupted = (student_dir / "train" / "last.pth").is_file()
    log(f"[3/4] itKD student      $ itkd compress --recipe {compress_recipe_name} --teacher {teacher}{ratio_flag}"
        f"{s_set_str} --out {student_dir}{' --resume' if interrupted else ''}")
    t2 = time.perf_counter()
    report_path = student_dir / "report.json"
    if report_path.is_file():
        log(f"      reusing the finished student {student_dir / 'student.pth'}")
        report = json.loads(report_path.read_text())
    else:
        report = compress(c_recipe, teacher, student_dir, resume=interrupted, quiet=quiet,
                          max_eval_frames=max_eval_frames, log=log).report
    timings["student_s"] = time.perf_counter() - t2

    log(f"[4/4] ONNX export       $ itkd export --onnx --checkpoint {student_dir / 'student.pth'} --out {export_dir}")
    t3 = time.perf_counter()
    exported = _export_once(student_dir / "student.pth", export_dir, log)
    exported_teacher = _export_once(teacher, out / "export_teacher", log)
    timings["export_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0

    summary = {
        "out": str(out), "world": {k: world.get(k) for k in ("keyframes", "annotations", "splits") if k in world},
        "teacher": _side(report["teacher"], exported_teacher),
        "student": _side(report["student"], exported),
        "paths": {"dataset": str(data_root), "teacher": str(teacher), "student": str(student_dir / "student.pth"),
                  "report": str(student_dir / "report.md"), "curves": str(student_dir / "curves.png"),
                  "onnx": exported["onnx"], "model_card": exported["card"],
                  "teacher_onnx": exported_teacher["onnx"]},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "notes": accuracy_notes(report["teacher"].get("mAP"), recipe.train.epochs,
                                world.get("splits", {}).get(recipe.dataset.train_split), preset),
    }
    write_json(out / "demo.json", summary)
    return summary
