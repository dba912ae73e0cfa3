"""Paired-seed distillation benchmark: how much of the student-alone -> teacher gap each method closes.

Usage:
    .venv/bin/python benchmarks/bench_kd.py --out runs/kd [--teacher-epochs 60] [--student-epochs 8]
        [--seeds 0 1 2] [--rows NAME ...] [--eval-seed 100] [--workers 2] [--set KEY=VALUE ...]

One synthetic world (`default` preset, seed 0) trains one teacher and every student. Every row is a
method (or a ratio-1.0 copy) run once per seed through the same code as `itkd compress`; seed k means
the same student init, data order and augmentation for every row (train.seed=k reseeds all of them per
epoch), so each row is compared with its reference row seed by seed (paired).

The '+unlabeled' rows add a pool of unlabeled scenes (`--unlabeled-scenes`, KD terms only there); the
'+pool labels' row is their yardstick, what annotating the pool would give: the same scenes' keyframes with
their boxes, trained on with labels alone for about the pool rows' step count.

Scored on a bench split 5x the val split: the 200 keyframes of the train scenes of a second world
(`--eval-seed`), none of which any network trained on; the world's own 40-frame val split is shown too.

Per row: mean mAP over seeds, mean paired difference to its reference row (the student alone for the
1/4 rows, the copy alone for the ratio-1.0 rows) with a two-sided 90% t interval, and the gap closed =
difference / (teacher - mean reference) with the same interval. The noise floor is the student alone's
seed std / gap: what one seed of one row can resolve. The teacher counts as converged when its copy,
trained on as a student alone, does not beat it (the interval of copy - teacher is not above 0).

Each run is resumable and reused once finished (out/runs/<row>/seed<k>/report.json), so rows can be
added across sessions on the same machine type. Prints one table; writes out/bench_kd.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from itkd_cli.core.io import write_json, write_text

TEACHER_RECIPE, STUDENT_RECIPE = "synth-pillar", "synth-pillar-itkd-1-4"
BENCH_SPLIT = "synth_train"  # of the eval world: scenes no network trained on
UNLABELED_SPLIT = "synth_unlabeled"
POOL_SPLIT = "synth_pool"  # of the oracle world: the pool's scenes alone, annotated (to score the teacher's labels)
# The unlabeled rows: each batch takes 4 labeled frames (the order of the labeled rows' batches of 4, seed by
# seed) plus 4 frames of the pool, so they run the same steps on the same labeled batches as the student alone.
POOL_BATCH, POOL_SHARE = 8, 0.5
POOL = (f"train.batch_size={POOL_BATCH}",
        f"dataset.unlabeled={{source: split, split: {UNLABELED_SPLIT}, ratio: {POOL_SHARE}}}")
# The world a row trains on: the labeled one; the one with the unlabeled pool; or the oracle world, where the
# pool's scenes carry their annotations and join the train split (what annotating the pool would give).
LABELED, POOLED, ORACLE = "labeled", "pool", "oracle"
# name -> (--method, --ratio, extra --set overrides, world)
ROWS: dict[str, tuple[str, float, tuple[str, ...], str]] = {
    "alone": ("none", 0.25, (), LABELED),
    "itkd": ("itkd", 0.25, (), LABELED),
    "itkd paper": ("itkd", 0.25, ("distill.itkd.form=paper",), LABELED),
    "hinton": ("hinton", 0.25, (), LABELED),
    "fitnet": ("fitnet", 0.25, (), LABELED),
    "sparsekd": ("sparsekd", 0.25, (), LABELED),
    "itkd +unlabeled": ("itkd", 0.25, POOL, POOLED),  # lambda 0.5, the default form's with a pool
    # loss balance: on a pool frame lambda is the only weight (no detection term there); 0.1 was the default
    "itkd +unlabeled lam 0.1": ("itkd", 0.25, (*POOL, "distill.itkd.lam=0.1"), POOLED),
    "hinton +unlabeled": ("hinton", 0.25, POOL, POOLED),
    "fitnet +unlabeled": ("fitnet", 0.25, POOL, POOLED),
    "sparsekd +unlabeled": ("sparsekd", 0.25, POOL, POOLED),
    # the pool's keyframes labeled, batches of 8 and epochs scaled to the pool rows' step count (oracle_epochs)
    "alone +pool labels": ("none", 0.25, (f"train.batch_size={POOL_BATCH}",), ORACLE),
    "copy alone": ("none", 1.0, (), LABELED),
    # at an exact copy every KD term starts near its best value: does the method fight the labels?
    "copy itkd": ("itkd", 1.0, (), LABELED),
}
REFERENCE = {0.25: "alone", 1.0: "copy alone"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("/", "_")


def t_quantile(level: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def mean_interval(values: list[float], level: float = 0.9) -> tuple[float, Optional[float], Optional[float]]:
    """Mean and its two-sided t interval (None with fewer than two values)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None, None
    half = t_quantile(level, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def paired(row: dict[int, float], ref: dict[int, float], teacher: float, level: float = 0.9) -> dict[str, Any]:
    """Paired comparison of a row with its reference over the seeds both have.

    Returns n, the mean difference with its interval, and the same as a fraction of the gap
    teacher - mean(reference) (None where there is no gap: the reference matches the teacher)."""
    seeds = sorted(set(row) & set(ref))
    if not seeds:
        return {"n": 0, "diff": None, "diff_lo": None, "diff_hi": None, "gap": None,
                "closed": None, "closed_lo": None, "closed_hi": None}
    diff, lo, hi = mean_interval([row[s] - ref[s] for s in seeds], level)
    gap = teacher - statistics.fmean(ref[s] for s in seeds)
    scale = (lambda v: None if v is None else v / gap) if gap > 0 else (lambda v: None)
    return {"n": len(seeds), "diff": diff, "diff_lo": lo, "diff_hi": hi, "gap": gap,
            "closed": scale(diff), "closed_lo": scale(lo), "closed_hi": scale(hi)}


def noise_floor(ref: dict[int, float], teacher: float) -> Optional[float]:
    """Seed std of the reference row over the gap it leaves to the teacher (None: < 2 seeds or no gap)."""
    values = list(ref.values())
    gap = teacher - statistics.fmean(values) if values else 0.0
    return statistics.stdev(values) / gap if len(values) >= 2 and gap > 0 else None


def make_world(out: Path, name: str, seed: int, unlabeled_scenes: int = 0) -> Path:
    """The `default` world of ``seed`` (its labeled scenes are the same with or without unlabeled ones)."""
    from itkd_cli.data.synth.render import generate

    world = out / name
    summary = generate(world, seed=seed, preset="default", unlabeled_scenes=unlabeled_scenes)
    log(f"{name} {world} (seed {seed}, {unlabeled_scenes} unlabeled scenes): reused={summary.get('reused')}")
    return world


def make_oracle_world(out: Path, world: Path, unlabeled_scenes: int) -> Path:
    """The world of seed 0 with ``unlabeled_scenes`` more scenes, all annotated; the extra scenes are
    byte-identical to the unlabeled pool's (a scene is seeded by its index) and join the train split, the val
    split stays the labeled world's; split ``POOL_SPLIT`` lists the extra scenes alone. Returns its root."""
    from itkd_cli.data.synth.render import TRAIN_SPLIT, VAL_SPLIT, VERSION, generate

    splits = json.loads((world / VERSION / "splits.json").read_text())
    labeled = len(splits[TRAIN_SPLIT]) + len(splits[VAL_SPLIT])
    oracle = out / f"world_oracle{unlabeled_scenes}"
    summary = generate(oracle, scenes=labeled + unlabeled_scenes, seed=0, preset="default")
    extra = [f"scene-{i + 1:04d}" for i in range(labeled, labeled + unlabeled_scenes)]
    want = {TRAIN_SPLIT: splits[TRAIN_SPLIT] + extra, VAL_SPLIT: splits[VAL_SPLIT], POOL_SPLIT: extra}
    path = oracle / VERSION / "splits.json"
    if json.loads(path.read_text()) != want:
        if (oracle / "itkd_cache").exists():  # infos cached for the generator's own splits
            shutil.rmtree(oracle / "itkd_cache")
        write_json(path, want)
    log(f"oracle world {oracle}: {len(want[TRAIN_SPLIT])} train scenes, reused={summary.get('reused')}")
    return oracle


def oracle_epochs(epochs: int, world: Path, oracle: Path, labeled_batch: int) -> int:
    """Epochs of the oracle rows that run about as many steps as the pool rows (``epochs`` over the labeled
    train split at ``labeled_batch`` labeled frames a step)."""
    from itkd_cli.data.synth.render import MARKER, TRAIN_SPLIT, VERSION

    def keyframes(root: Path) -> int:
        frames = json.loads((root / MARKER).read_text())["args"]["frames"]  # keyframes per scene
        return len(json.loads((root / VERSION / "splits.json").read_text())[TRAIN_SPLIT]) * frames

    steps = epochs * math.ceil(keyframes(world) / labeled_batch)
    return max(1, round(steps / math.ceil(keyframes(oracle) / POOL_BATCH)))


def make_teacher(out: Path, world: Path, epochs: int, workers: int, sets: list[str]) -> Path:
    """Train the teacher once (out/teacher/last.pth, resumed when interrupted, reused when done)."""
    from itkd_cli.recipe.load import load_recipe
    from itkd_cli.train.train import train

    run, t0 = out / "teacher", time.perf_counter()
    last, done = run / "last.pth", run / "done.txt"
    if not done.is_file():
        recipe = load_recipe(TEACHER_RECIPE, [f"dataset.root={world}", f"train.epochs={epochs}", "train.seed=0",
                                              f"dataset.workers={workers}", *sets])
        train(recipe, run, resume=run if last.is_file() else None, quiet=True)
        write_text(done, f"trained {epochs} epochs in {time.perf_counter() - t0:.0f} s\n")
    log(f"teacher {last}: {done.read_text().strip()}")
    return last


def run_one(out: Path, name: str, seed: int, teacher: Path, world: Path, epochs: int, workers: int,
            sets: list[str]) -> Path:
    """One `itkd compress` run of row ``name`` with train.seed=seed; returns its folder."""
    from itkd_cli.pipeline.compress import compress, compress_recipe

    method, ratio, extra, _ = ROWS[name]
    run = out / "runs" / slug(name) / f"seed{seed}"
    if (run / "report.json").is_file():
        return run
    cached = out / "teacher_eval" / "metrics.json"  # same teacher and split: skip re-evaluating it
    if cached.is_file():
        (run / "eval_teacher").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, run / "eval_teacher" / "metrics.json")
    recipe = compress_recipe(teacher, STUDENT_RECIPE, [f"dataset.root={world}", f"train.epochs={epochs}",
                                                       f"train.seed={seed}", f"dataset.workers={workers}",
                                                       *sets, *extra], ratio, None, method)
    t0 = time.perf_counter()
    compress(recipe, teacher, run, resume=(run / "train" / "last.pth").is_file(), quiet=True, log=lambda m: None)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "eval_teacher" / "metrics.json", cached)
    log(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s")
    return run


def bench_map(checkpoint: Path, eval_world: Path, cache: Path) -> float:
    """mAP of a checkpoint on the eval world's bench split (official DetectionEval), cached in ``cache``."""
    from itkd_cli.evaluate.run import evaluate_nuscenes, load_model
    from itkd_cli.recipe.load import apply_overrides, validate

    metrics = cache / "metrics.json"
    if not metrics.is_file():
        model, stored = load_model(checkpoint)
        data = apply_overrides(stored.model_dump(mode="json"), [f"dataset.root={eval_world}"])
        evaluate_nuscenes(validate(data, f"{checkpoint}: recipe on the eval world"), model, cache, split=BENCH_SPLIT)
    return json.loads(metrics.read_text())["mAP"]


def _fmt(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _interval(c: dict[str, Any], key: str, spec: str) -> str:
    if c[key] is None:
        return "n/a"
    lo, hi = c[f"{key}_lo"], c[f"{key}_hi"]
    return format(c[key], spec) + ("" if lo is None else f" [{format(lo, spec)}, {format(hi, spec)}]")


def summarise(scores: dict[str, dict[int, dict[str, float]]], teacher: dict[str, float]) -> dict[str, Any]:
    """Rows with paired statistics on the bench split (and the mean val-split mAP), the noise floor and
    the convergence check. ``scores[row][seed]`` = {"bench": mAP, "val": mAP}."""
    bench = {name: {s: v["bench"] for s, v in seeds.items()} for name, seeds in scores.items()}
    rows = []
    for name, seeds in scores.items():
        ref = REFERENCE[ROWS[name][1]]
        c = paired(bench[name], bench.get(ref, {}), teacher["bench"]) if name != ref else None
        if c is not None and ROWS[name][1] >= 1.0:  # a copy has no gap to the teacher to close: mAP only
            c.update(closed=None, closed_lo=None, closed_hi=None)
        rows.append({"row": name, "ratio": ROWS[name][1], "seeds": sorted(seeds), "reference": ref,
                     "bench_mAP": statistics.fmean(bench[name].values()),
                     "val_mAP": statistics.fmean(v["val"] for v in seeds.values()), "paired": c})
    copy = bench.get("copy alone", {})
    converged = None
    if len(copy) >= 2:
        m, lo, hi = mean_interval([v - teacher["bench"] for v in copy.values()])
        converged = {"copy_minus_teacher": m, "lo": lo, "hi": hi, "converged": lo <= 0}
    alone = list(bench.get("alone", {}).values())
    gap = teacher["bench"] - statistics.fmean(alone) if alone else None
    return {"teacher": teacher, "rows": rows, "noise_floor": noise_floor(bench.get("alone", {}), teacher["bench"]),
            "gap": gap, "convergence": converged}


def markdown(s: dict[str, Any], command: str) -> str:
    t = s["teacher"]
    lines = ["| row | ratio | seeds | bench mAP (mean) | val mAP (mean) | mAP vs reference [90%] | gap closed [90%] |",
             "|---|---|---|---|---|---|---|",
             f"| teacher | 1.0 | - | {t['bench']:.4f} | {t['val']:.4f} | | |"]
    for r in s["rows"]:
        c = r["paired"]
        lines.append(f"| {r['row']} | {r['ratio']} | {len(r['seeds'])} | {r['bench_mAP']:.4f} | {r['val_mAP']:.4f} | "
                     + ("reference | |" if c is None else f"{_interval(c, 'diff', '+.4f')} | {_interval(c, 'closed', '+.2f')} |"))
    nf, conv, gap = s["noise_floor"], s["convergence"], s.get("gap")
    lines += ["", f"noise floor (student alone's seed std / gap): {_fmt(nf, '.1%')} (target <= 10%)"]
    if gap is not None and gap <= 0:  # gap closed and noise floor are undefined: say why instead of n/a
        lines.append(f"NO GAP: the student alone scores {-gap:.4f} above the teacher on the bench split, so the "
                     "teacher is no ceiling at this schedule (train it longer than the students)")
    if conv:
        lines.append(f"teacher converged (its copy trained on does not beat it): {'yes' if conv['converged'] else 'NO'}"
                     f" (copy - teacher {conv['copy_minus_teacher']:+.4f} [{conv['lo']:+.4f}, {conv['hi']:+.4f}])")
    lines += ["", "```", command, "```"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/kd"))
    ap.add_argument("--teacher-epochs", type=int, default=60)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows to run, of: {', '.join(ROWS)}")
    ap.add_argument("--eval-seed", type=int, default=100, help="seed of the world whose train scenes score")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--unlabeled-scenes", type=int, default=40,
                    help="scenes of the unlabeled pool of the '+unlabeled' rows, annotated in the '+pool labels' row "
                         "(the labeled split has 10)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override for teacher and students")
    args = ap.parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(ROWS)}")
    if args.eval_seed == 0:
        ap.error("--eval-seed must differ from 0, the training world's seed")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds: each seed once")
    out = args.out
    if args.unlabeled_scenes < 1:
        ap.error("--unlabeled-scenes: at least 1")
    world, eval_world = make_world(out, "world", 0), make_world(out, "eval_world", args.eval_seed)
    worlds, epochs = {LABELED: world}, {LABELED: args.student_epochs, POOLED: args.student_epochs}
    kinds = {ROWS[name][3] for name in args.rows}
    if POOLED in kinds:
        worlds[POOLED] = make_world(out, f"world_unlabeled{args.unlabeled_scenes}", 0, args.unlabeled_scenes)
    if ORACLE in kinds:
        worlds[ORACLE] = make_oracle_world(out, world, args.unlabeled_scenes)
        epochs[ORACLE] = oracle_epochs(args.student_epochs, world, worlds[ORACLE], round(POOL_BATCH * POOL_SHARE))
        log(f"oracle rows: {epochs[ORACLE]} epochs of batches of {POOL_BATCH} (about the pool rows' steps)")
    teacher = make_teacher(out, world, args.teacher_epochs, args.workers, args.sets)
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for name in args.rows:  # row by row: a row's seeds finish together, so a session ends on whole rows
        kind = ROWS[name][3]
        for seed in args.seeds:
            run = run_one(out, name, seed, teacher, worlds[kind], epochs[kind], args.workers, args.sets)
            val = json.loads((run / "report.json").read_text())["student"]["mAP"]
            scores.setdefault(name, {})[seed] = {"bench": bench_map(run / "student.pth", eval_world, run / "eval_bench"),
                                                 "val": val}
    teacher_val = json.loads((out / "teacher_eval" / "metrics.json").read_text())["mAP"] if scores else None
    if not scores:
        log("no row asked for: worlds and teacher ready")
        return 0
    summary = summarise(scores, {"bench": bench_map(teacher, eval_world, out / "teacher_eval_bench"), "val": teacher_val})
    command = shlex.join([Path(sys.executable).name, *sys.argv])  # row names with spaces stay quoted
    md = markdown(summary, command)
    write_text(out / "bench_kd.md", md)
    write_json(out / "bench_kd.json", {"command": command, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **summary})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
