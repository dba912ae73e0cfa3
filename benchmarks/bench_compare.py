"""itKD vs the student alone, the baselines and itKD ablations, on the embedded synthetic default.

Usage:
    .venv/bin/python benchmarks/bench_compare.py --out runs/compare [--preset default] [--scenes N]
        [--seed 0] [--teacher-epochs N] [--student-epochs N] [--teacher PATH] [--ratio 0.25]
        [--max-eval-frames N] [--only NAME ...] [--set KEY=VALUE ...] [--variant NAME METHOD [KEY=VALUE ...]]
        [--tune-seed N]

One synthetic world (out/world), one teacher (out/teacher/last.pth, or --teacher), then every student
run goes through the same code as `itkd compress` (compress_recipe + compress) with the SAME schedule
and seed; only the method / distill overrides differ. A run whose report.json exists is skipped, so a
killed benchmark resumes where it stopped. Prints one table and writes comparison.md / comparison.json.

Columns: mAP, NDS (official nuScenes DetectionEval on the val split), params and GMACs (profile on the
first val frame), train step time (median sec_per_step of the run's train/metrics.jsonl) and
gap closed = (mAP_run - mAP_alone) / (mAP_teacher - mAP_alone). With --tune-seed every model is also
scored on the val split of a second world (same preset, other seed): the tuning split on which
configurations are compared, so that the reported val split is used for nothing but the final numbers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from itkd_cli.core.io import write_json, write_text
from itkd_cli.pipeline.report import read_metrics_log

RECIPE = "synth-pillar"
# (run name, --method, extra --set overrides); "none" is the reference "student alone".
RUNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("none", "none", ()),
    ("hinton", "hinton", ()),
    ("fitnet", "fitnet", ()),
    ("sparsekd", "sparsekd", ()),
    ("itkd", "itkd", ()),
    ("itkd paper", "itkd", ("distill.itkd.form=paper",)),
    ("itkd w/o L_cr", "itkd", ("distill.itkd.w_cr=0",)),
    ("itkd w/o L_it", "itkd", ("distill.itkd.w_it=0",)),
    ("itkd w/o head attn", "itkd", ("distill.itkd.w_head=0",)),
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    """Folder name of a run: 'itkd w/o L_cr' -> 'itkd_wo_L_cr'."""
    return name.replace("w/o", "wo").replace(" ", "_").replace("/", "_")


def common_sets(world: Path, epochs: int, seed: int, workers: int, extra: list[str]) -> list[str]:
    """Overrides shared by the teacher and every student run (only train.epochs differs between the two)."""
    return [f"dataset.root={world}", f"train.epochs={epochs}", f"train.seed={seed}", f"dataset.workers={workers}",
            *extra]


def make_world(out: Path, preset: str, scenes: Optional[int], seed: int) -> Path:
    """Generate (or reuse: generate() accepts a finished run of the same arguments) the synthetic world."""
    from itkd_cli.data.synth.render import generate

    world = out / "world"
    t0 = time.perf_counter()
    summary = generate(world, scenes=scenes, seed=seed, preset=preset)
    log(f"world {world}: reused={summary.get('reused')} ({time.perf_counter() - t0:.0f} s)")
    return world


def snapshot_recipe(out: Path) -> str:
    """Freeze the embedded recipe into out/recipe.yaml on the first run so that a resumed benchmark
    keeps training every network with the very same recipe even if the embedded one changes."""
    import yaml

    from itkd_cli.recipe.load import load_raw, resolve_path

    frozen = out / "recipe.yaml"
    if not frozen.is_file():
        write_text(frozen, yaml.safe_dump(load_raw(resolve_path(RECIPE)), sort_keys=False))
    return str(frozen)


def make_teacher(out: Path, world: Path, epochs: int, seed: int, workers: int, extra: list[str]) -> Path:
    """Train the teacher once (out/teacher/last.pth); a finished teacher is reused."""
    from itkd_cli.recipe.load import load_recipe
    from itkd_cli.train.train import train

    run = out / "teacher"
    last = run / "last.pth"
    done = run / "done.txt"
    if done.is_file() and last.is_file():
        log(f"teacher {last}: reused")
        return last
    recipe = load_recipe(snapshot_recipe(out), common_sets(world, epochs, seed, workers, extra))
    t0 = time.perf_counter()
    train(recipe, run, resume=run if last.is_file() else None, quiet=True)
    write_text(done, f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s\n")
    log(f"teacher {last}: trained {epochs} epochs in {time.perf_counter() - t0:.0f} s")
    return last


def run_one(out: Path, name: str, method: str, extra: tuple[str, ...], teacher: Path, sets: list[str],
            ratio: float, max_eval_frames: Optional[int]) -> dict[str, Any]:
    """One `itkd compress` run (skipped when its report.json exists); returns its report."""
    import json

    from itkd_cli.pipeline.compress import compress, compress_recipe

    run = out / "runs" / slug(name)
    report = run / "report.json"
    if report.is_file():
        log(f"{name}: reused {report}")
        return json.loads(report.read_text())
    teacher_eval = out / "teacher_eval" / "metrics.json"
    if teacher_eval.is_file():  # same teacher, same split: compress reuses eval_teacher/metrics.json
        (run / "eval_teacher").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(teacher_eval, run / "eval_teacher" / "metrics.json")
    recipe = compress_recipe(teacher, snapshot_recipe(out), [*sets, *extra], ratio, None, method)
    t0 = time.perf_counter()
    resume = (run / "train" / "last.pth").is_file()
    result = compress(recipe, teacher, run, resume=resume, quiet=True, max_eval_frames=max_eval_frames, log=log)
    if not teacher_eval.is_file():
        teacher_eval.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "eval_teacher" / "metrics.json", teacher_eval)
    log(f"{name}: done in {time.perf_counter() - t0:.0f} s, mAP {result.report['student']['mAP']:.4f}")
    return result.report


def step_time(run: Path) -> Optional[float]:
    """Median sec_per_step logged by the run's training loop."""
    values = [r["sec_per_step"] for r in read_metrics_log(run / "train" / "metrics.jsonl") if "sec_per_step" in r]
    return statistics.median(values) if values else None


def tune_map(out: Path, name: str, checkpoint: Path, tune_world: Optional[Path]) -> Optional[float]:
    """mAP of a checkpoint on the TUNING world's val split (another seed of the same preset), cached.

    Choices between configurations are made on this column, never on the reported val split."""
    import json

    if tune_world is None:
        return None
    from itkd_cli.evaluate.run import evaluate_nuscenes, load_model
    from itkd_cli.recipe.load import apply_overrides, validate

    cached = out / "tune_eval" / slug(name) / "metrics.json"
    if not cached.is_file():
        model, stored = load_model(checkpoint)
        data = apply_overrides(stored.model_dump(mode="json"), [f"dataset.root={tune_world}"])
        evaluate_nuscenes(validate(data, f"{checkpoint}: recipe on the tuning world"), model, cached.parent)
        log(f"{name}: tuning-world mAP {json.loads(cached.read_text())['mAP']:.4f}")
    return json.loads(cached.read_text())["mAP"]


def _gap_closed(value: Optional[float], alone: Optional[float], teacher: Optional[float]) -> Optional[float]:
    """Fraction of the teacher - alone gap a run closes; undefined (None) when the student alone
    already matches or beats the teacher: there is then no gap to close."""
    if value is None or alone is None or teacher is None or teacher <= alone:
        return None
    return (value - alone) / (teacher - alone)


def table(out: Path, reports: dict[str, dict[str, Any]], teacher: Path,
          tune_world: Optional[Path] = None) -> list[dict[str, Any]]:
    """Rows: teacher first, then every run with the fraction of the teacher - alone mAP gap it closes
    (on the reported val split, and on the tuning world when one is given)."""
    any_report = next(iter(reports.values()))
    t = any_report["teacher"]
    alone = reports["none"]["student"]["mAP"] if "none" in reports else None
    tune = {name: tune_map(out, name, out / "runs" / slug(name) / "student.pth", tune_world) for name in reports}
    tune_t = tune_map(out, "teacher", teacher, tune_world)
    rows = [{"method": "teacher", "mAP": t["mAP"], "NDS": t["NDS"], "params": t["params"], "gmacs": t["gmacs"],
             "sec_per_step": _teacher_step(teacher.parent), "step_vs_alone": None, "gap_closed": 1.0,
             "tune_mAP": tune_t, "tune_gap_closed": 1.0 if tune_world else None}]
    alone_step = step_time(out / "runs" / slug("none")) if "none" in reports else None
    for name, rep in reports.items():
        s, sec = rep["student"], step_time(out / "runs" / slug(name))
        rows.append({"method": name, "mAP": s["mAP"], "NDS": s["NDS"], "params": s["params"], "gmacs": s["gmacs"],
                     "sec_per_step": sec, "step_vs_alone": sec / alone_step if sec and alone_step else None,
                     "gap_closed": _gap_closed(s["mAP"], alone, t["mAP"]),
                     "tune_mAP": tune[name], "tune_gap_closed": _gap_closed(tune[name], tune.get("none"), tune_t)})
    return rows


def _teacher_step(run: Path) -> Optional[float]:
    """Median step time of the teacher's own training run (the folder holding its checkpoint)."""
    values = [r["sec_per_step"] for r in read_metrics_log(run / "metrics.jsonl") if "sec_per_step" in r]
    return statistics.median(values) if values else None


def _f(v: Any, fmt: str) -> str:
    return "n/a" if v is None else fmt.format(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    tuned = any(r["tune_mAP"] is not None for r in rows)
    lines = ["| method | mAP | NDS | params | GMACs | train s/step | s/step vs alone | gap closed |"
             + (" tuning-world mAP | tuning gap closed |" if tuned else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|" if tuned else "")]
    for r in rows:
        lines.append(f"| {r['method']} | {_f(r['mAP'], '{:.4f}')} | {_f(r['NDS'], '{:.4f}')} | "
                     f"{_f(r['params'], '{:,.0f}')} | {_f(r['gmacs'], '{:.2f}')} | "
                     f"{_f(r['sec_per_step'], '{:.3f}')} | {_f(r['step_vs_alone'], '{:.2f}x')} | "
                     f"{_f(r['gap_closed'], '{:+.2f}')} |"
                     + (f" {_f(r['tune_mAP'], '{:.4f}')} | {_f(r['tune_gap_closed'], '{:+.2f}')} |" if tuned else ""))
    lines += ["", "teacher s/step is the teacher's own training step; students' include the frozen teacher forward.",
              "", "```", " ".join(meta["command"]), "```"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    ap.add_argument("--preset", default="default")
    ap.add_argument("--scenes", type=int, default=None, help="override the preset's scene count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--teacher", type=Path, default=None, help="reuse this teacher (trained on the same world)")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: share few cores politely)")
    ap.add_argument("--max-eval-frames", type=int, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="recipe override for the teacher and every student, e.g. train.batch_size=2")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 avoids OpenMP oversubscription when other jobs share the cores)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these names (see RUNS)")
    ap.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME METHOD [KEY=VALUE]",
                    help="an extra run besides RUNS (always run, --only or not), e.g. "
                         "--variant 'itkd paper form' itkd distill.itkd.form=paper")
    ap.add_argument("--tune-seed", type=int, default=None,
                    help="also score every model on the val split of a second world of this seed (the tuning "
                         "split: compare configurations there, keep the reported val split for the final numbers)")
    args = ap.parse_args(argv)
    bad = [v for v in args.variant if len(v) < 2 or any("=" not in kv for kv in v[2:])]
    if bad:  # arguments are checked before any world or teacher is made
        ap.error(f"--variant {' '.join(bad[0])}: expected NAME METHOD [KEY=VALUE ...]")
    if args.tune_seed is not None and args.tune_seed == args.seed:
        ap.error("--tune-seed must differ from --seed: the tuning world must not be the reported one")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(out, args.preset, args.scenes, args.seed)
    teacher = args.teacher or make_teacher(out, world, args.teacher_epochs, args.seed, args.workers, args.sets)
    sets = common_sets(world, args.student_epochs, args.seed, args.workers, args.sets)
    tune_world = None
    if args.tune_seed is not None:
        from itkd_cli.data.synth.render import generate

        tune_world = out / "tune_world"
        generate(tune_world, scenes=args.scenes, seed=args.tune_seed, preset=args.preset)
    reports = {}
    runs = [(name, method, extra) for name, method, extra in RUNS if args.only is None or name in args.only]
    for name, method, extra in runs + [(v[0], v[1], tuple(v[2:])) for v in args.variant]:
        reports[name] = run_one(out, name, method, extra, teacher, sets, args.ratio, args.max_eval_frames)
    if not reports:  # `--only` with no names: the world, teacher and tuning world are ready for later runs
        log(f"no student run asked for: world, teacher {teacher} and tuning world ready")
        return 0
    rows = table(out, reports, teacher, tune_world)
    meta = {"command": [Path(sys.executable).name, *sys.argv], "preset": args.preset, "scenes": args.scenes,
            "seed": args.seed, "tune_seed": args.tune_seed, "teacher_epochs": None if args.teacher else args.teacher_epochs,
            "student_epochs": args.student_epochs,
            "ratio": args.ratio, "sets": args.sets, "teacher": str(teacher),
            "split": next(iter(reports.values()))["split"], "threads": args.threads,
            "loadavg_at_table": os.getloadavg(),
            "cpus": os.cpu_count()}
    md = markdown(rows, meta)
    write_text(out / "comparison.md", md)
    write_json(out / "comparison.json", {"meta": meta, "rows": rows})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
