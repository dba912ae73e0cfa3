"""The page of one compress run (report.md / report.html) from its report.json, train/metrics.jsonl and the
ONNX export beside the student: what a CI job's reader opens.

Sections: gates, teacher vs student, AP per class (table + bar chart), unlabeled pool, KD pull, notes, training
curves, ONNX verification, and the commands that reproduce the run (with ``recipe.yaml``, its resolved recipe,
beside the page).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, NamedTuple, Optional

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json, write_text
from itkd_cli.pipeline.gates import FLAGS, show_value
from itkd_cli.pipeline.page import Block, Bullets, Code, Heading, Image, Para, Table, to_html, to_markdown
from itkd_cli.pipeline.report import (
    comparison_rows, is_waymo, per_class_rows, plot_ap_per_class, read_metrics_log,
)

FORMATS = ("md", "html")
AP_CHART = "ap_per_class.png"
CURVES = "curves.png"
RECIPE = "recipe.yaml"


class Page(NamedTuple):
    """A written page: its file, the pictures it shows, the recipe beside it, the ONNX export it found."""

    path: Path
    images: list[Path]
    recipe: Optional[Path]
    export: Optional[Path]
    ap_chart: Optional[dict[str, list]]


def read_run(run_dir: Path) -> dict[str, Any]:
    """The report.json of a compress run folder.

    Raises:
        ItkdError: no such folder, or no compress report in it (exit 2).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ItkdError(f"{run_dir}: no such run folder", hint="pass the --out folder of `itkd compress`")
    path = run_dir / "report.json"
    if not path.is_file():
        raise ItkdError(f"{run_dir}: not an itkd compress run (no report.json)",
                        hint="`itkd compress --teacher T --out DIR` writes one; `itkd report DIR` then renders it")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ItkdError(f"{path}: unreadable ({exc})", hint="rerun the compress job that wrote it") from None
    missing = [k for k in ("method", "teacher", "student") if not isinstance(report, dict) or k not in report]
    if missing:
        raise ItkdError(f"{path}: not a compress report (no {', '.join(missing)})",
                        hint="`itkd report` renders the report.json of `itkd compress`")
    return report


def _gates(report: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Gates")]
    if "gates" not in report:
        return blocks + [Para("Not checked: this report.json was written by an itkd without gates.")]
    if not report["gates"]:
        flags = ", ".join(f"`{f}`" for f in FLAGS.values())
        return blocks + [Para(f"No gates were set ({flags} on `itkd compress`, or `gates:` in the recipe).")]
    rows = [[FLAGS.get(g["name"], g["name"]), g.get("metric", ""), show_value(g["name"], g["threshold"]),
             "not measured" if g["value"] is None else show_value(g["name"], g["value"]),
             "passed" if g["passed"] else "FAILED"] for g in report["gates"]]
    return blocks + [Table(["gate", "measured", "threshold", "value", "result"], rows)]


def _comparison(report: dict[str, Any]) -> list[Block]:
    t, s = report["teacher"], report["student"]
    frame = s.get("profile_frame") or {}
    where = f" ({frame['points']:,} points, {frame['voxels']:,} pillars/voxels)" if frame else ""
    return [Heading("Teacher vs student"),
            Table(["", "teacher", "student", "student / teacher"], comparison_rows(t, s)),
            Para(f"Params and MACs of one forward; latency: median of 5 CPU PyTorch eager forwards (batch 1, "
                 f"after one warm-up) on the first val frame{where}, both networks in the same process. "
                 + ("mAP / mAPH: the official Waymo detection metrics (LEVEL_1 / LEVEL_2)." if is_waymo(s) else
                    "mAP / NDS: the official nuScenes DetectionEval (detection_cvpr_2019)."))]


def _per_class(report: dict[str, Any], chart: Optional[Path]) -> list[Block]:
    rows = per_class_rows(report["teacher"], report["student"])
    blocks: list[Block] = [Heading("APH (LEVEL_2) per class" if is_waymo(report["student"]) else "AP per class")]
    if chart is not None:
        blocks.append(Image(chart, "AP per class, teacher vs student"))
    return blocks + ([Table(["class", "teacher", "student"], rows)] if rows else [Para("No per-class AP reported.")])


def _pool(report: dict[str, Any]) -> list[Block]:
    """The unlabeled pool of the run (report.json ``unlabeled``), when it used one."""
    pool = report.get("unlabeled")
    if not pool:
        return []
    split = f"split `{pool.get('split') or 'dataset.train_split'}`"
    where = {"folder": f"the point files of folder `{pool.get('folder')}`",
             "sweeps": f"the non-key sweeps of {split}"}.get(pool.get("source"), f"the frames of {split}")
    threshold = pool.get("score_threshold")
    facts = [f"{where}: {pool.get('frames')} frames, {pool.get('ratio')} of every training batch",
             f"object centres of its frames: the teacher's boxes above {threshold} "
             "(`dataset.unlabeled.score_threshold`); the detection loss never reads them"]
    pre = pool.get("preflight") or {}
    if pre.get("frames"):
        boxes = pre.get("teacher_boxes") or []
        facts.append(f"pre-flight: {sum(boxes) / max(len(boxes), 1):.1f} teacher boxes per frame on "
                     f"{len(pre['frames'])} frames of the pool (best teacher score {pre.get('best_score', 0):.3f})")
    mean = pool.get("teacher_boxes_per_frame")
    facts.append("over training: not measured (no logged step held unlabeled frames)" if mean is None else
                 f"over training: {mean:.2f} teacher boxes per unlabeled frame (mean over {pool.get('logged_steps')} "
                 "logged steps)")
    return [Heading("Unlabeled pool"), Bullets(facts)]


def _kd_and_notes(report: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    if report.get("kd_pull"):
        blocks += [Heading("KD pull on the student"),
                   Para("Gradient norm of each weighted KD term on the student over the weighted detection loss's "
                        "(measured every 50 steps; above 1 the term outweighs the labels)."),
                   Table(["term", "mean", "max"], [[n, f"{p['mean']:.3f}", f"{p['max']:.3f}"]
                                                   for n, p in report["kd_pull"].items()])]
    if report.get("notes"):
        blocks += [Heading("Notes"), Bullets(report["notes"])]
    return blocks


def _curves(run_dir: Path) -> list[Block]:
    records = [r for r in read_metrics_log(run_dir / "train" / "metrics.jsonl") if "eval" not in r]
    blocks: list[Block] = [Heading("Training curves")]
    if (run_dir / CURVES).is_file():
        blocks.append(Image(run_dir / CURVES, "training curves"))
    if not records:
        return blocks + [Para("No training step logged in `train/metrics.jsonl`.")]
    first, last = records[0], records[-1]
    loss = (f"; loss {first['loss']:.4f} at step {first['step']} -> {last['loss']:.4f}"
            if "loss" in first and "loss" in last else "")
    return blocks + [Para(f"{len(records)} logged steps in `train/metrics.jsonl`, the last step {last['step']} "
                          f"(epoch {last.get('epoch', '?')}){loss}.")]


def find_export(run_dir: Path, stem: str) -> dict[str, Optional[Path]]:
    """The ONNX export of the student beside it: ``<stem>.onnx``, its model card and its ``.export.json``."""
    names = {"onnx": f"{stem}.onnx", "card": f"{stem}.model_card.md", "record": f"{stem}.export.json"}
    return {k: (run_dir / n if (run_dir / n).is_file() else None) for k, n in names.items()}


def _export(run_dir: Path, stem: str) -> list[Block]:
    found = find_export(run_dir, stem)
    blocks: list[Block] = [Heading("ONNX export")]
    if found["onnx"] is None:
        return blocks + [Para(f"No ONNX export beside the student (`{stem}.onnx`): `itkd export --onnx --checkpoint "
                              f"{run_dir / (stem + '.pth')}` exports and verifies it, then `itkd report {run_dir}` "
                              "adds its figures here.")]
    if found["record"] is None:
        return blocks + [Para(f"`{stem}.onnx` is here without its verification record `{stem}.export.json`: its "
                              "verification failed (see the export's output) or an earlier itkd exported it (its "
                              f"figures are then in `{stem}.model_card.md`).")]
    rec = json.loads(found["record"].read_text())
    frames = rec.get("frames", [])
    rows = []
    for f in frames:
        name, worst = max(f["outputs"].items(), key=lambda item: item[1]["max_abs"])
        d = f["decoded"]
        rows.append([f["frame"], f"{worst['max_abs']:.2e} ({name})", f"{d['torch_count']} / {d['ort_count']}",
                     f"{d['max_score_diff']:.2e}", f"{d['max_box_diff']:.2e}"])
    lat = rec.get("latency_ms", {})
    return blocks + [
        Para(f"`{Path(rec['onnx']).name}` ({rec.get('graph')}, opset {rec.get('opset')}), verified against PyTorch in "
             f"onnxruntime on {len(frames)} real frames within atol {rec.get('atol', 0):g}; every output's figures are "
             f"in `{stem}.model_card.md`."),
        Table(["frame", "largest max abs diff (output)", "boxes PyTorch / onnxruntime", "max score diff",
               "max box diff"], rows),
        Para(f"Latency of the exported graph (median): PyTorch eager {lat.get('torch_eager', 0):.1f} ms, onnxruntime "
             f"[{lat.get('provider')}] {lat.get('onnxruntime', 0):.1f} ms ({lat.get('speedup', 0):.2f}x)."),
    ]


def write_recipe(report: dict[str, Any], path: Path) -> Optional[Path]:
    """The run's resolved recipe (gates included) as YAML, for ``itkd compress --recipe``; None when report.json
    stores none, or one this itkd no longer reads."""
    from itkd_cli.recipe import dump_yaml, recipe_from_dict

    if not report.get("recipe"):
        return None
    try:
        text = dump_yaml(recipe_from_dict(report["recipe"], source="report.json recipe"))
    except ItkdError:
        return None
    return write_text(path, text)


def reproduce_commands(report: dict[str, Any], run_dir: Path, recipe: Path) -> str:
    """The commands that rerun this job into ``<run>.rerun``: compress, export, report."""
    again = Path(f"{run_dir.resolve()}.rerun")
    lines = [shlex.join(["cd", report["cwd"]])] if report.get("cwd") else []
    args = ["itkd", "compress", "--teacher", report["teacher_checkpoint"], "--recipe", str(recipe.resolve()),
            "--out", str(again)]
    if report.get("max_eval_frames") is not None:
        args += ["--max-eval-frames", str(report["max_eval_frames"])]
    lines += [shlex.join(args), shlex.join(["itkd", "export", "--onnx", "--checkpoint", str(again / "student.pth")]),
              shlex.join(["itkd", "report", str(again), "--format", "html"])]
    return "\n".join(lines)


def _reproduce(report: dict[str, Any], run_dir: Path, recipe: Optional[Path]) -> list[Block]:
    blocks: list[Block] = [Heading("Reproduce")]
    if recipe is None:
        return blocks + [Para("report.json stores no recipe this itkd can read: the run cannot be replayed from it.")]
    sha = ((report["teacher"].get("cache_key") or {}).get("teacher_sha256") or "")[:16]
    return blocks + [Code(reproduce_commands(report, run_dir, recipe)),
                     Para(f"`{recipe.name}` is the run's resolved recipe (teacher architecture, student, distill, "
                          f"train, gates); the teacher must be the same file" + (f" (sha256 {sha}...)." if sha else "."))]


def page_blocks(report: dict[str, Any], run_dir: Path, chart: Optional[Path], recipe: Optional[Path]) -> list[Block]:
    """Every section of the page, in reading order."""
    stem = Path(report.get("student_checkpoint") or "student.pth").stem
    gates = report.get("gates")
    verdict = ("gates not checked" if gates is None else "no gates set" if not gates else
               f"gates: {sum(g['passed'] for g in gates)} passed, {sum(not g['passed'] for g in gates)} failed")
    facts = [f"teacher: `{report.get('teacher_checkpoint')}`", f"student: `{report.get('student_checkpoint')}`",
             f"evaluated on split `{report.get('split')}` ({report.get('frames', 'all')} frames)", verdict]
    title = f"itkd compress report: {report['method']} student, ratio {report.get('ratio')} ({report.get('policy')} policy)"
    return [Heading(title, 1), Bullets(facts), *_gates(report), *_comparison(report), *_per_class(report, chart),
            *_pool(report), *_kd_and_notes(report), *_curves(run_dir), *_export(run_dir, stem), *_reproduce(report, run_dir, recipe)]


def _blocks(run_dir: Path, report: dict[str, Any], folder: Path) -> tuple[list[Block], Optional[dict], Optional[Path]]:
    """The page's blocks, with the AP chart and ``recipe.yaml`` written into ``folder`` (beside the page)."""
    chart_data = plot_ap_per_class(report, folder / AP_CHART)
    recipe = write_recipe(report, folder / RECIPE)
    return page_blocks(report, run_dir, folder / AP_CHART if chart_data else None, recipe), chart_data, recipe


def _write(blocks: list[Block], fmt: str, out: Path) -> Path:
    return write_text(out, to_markdown(blocks, out.parent) if fmt == "md" else to_html(blocks, blocks[0].text))


def write_page(run_dir: Path, report: dict[str, Any], fmt: str = "md", out: Optional[Path] = None) -> Page:
    """Render the page of the run in ``run_dir`` to ``out`` (default ``run_dir/report.<fmt>``), with the AP chart
    and ``recipe.yaml`` written beside it; every file atomically."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ItkdError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out) if out is not None else run_dir / f"report.{fmt}"
    blocks, chart_data, recipe = _blocks(run_dir, report, out.parent)
    export = find_export(run_dir, Path(report.get("student_checkpoint") or "student.pth").stem)["onnx"]
    return Page(_write(blocks, fmt, out), [b.path for b in blocks if isinstance(b, Image)], recipe, export, chart_data)


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """report.json, then its page as report.md and report.html (self-contained), all atomically; returns
    (report.json, report.md)."""
    out_dir = Path(out_dir)
    rj = write_json(out_dir / "report.json", report)
    blocks = _blocks(out_dir, report, out_dir)[0]
    md = _write(blocks, "md", out_dir / "report.md")
    _write(blocks, "html", out_dir / "report.html")
    return rj, md
