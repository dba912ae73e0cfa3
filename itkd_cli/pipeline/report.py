"""The numbers of a compress report (tables, notes, KD pulls) and its pictures: training curves, AP per class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from itkd_cli.core.io import atomic_path

# Rows of the comparison table: (label, key in a side's dict, format); then the dataset's accuracy rows.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("params", "params", "{:,.0f}"),
    ("MACs (G)", "gmacs", "{:.2f}"),
    ("CPU latency (ms)", "latency_ms", "{:.1f}"),
)
NUSCENES_ROWS: tuple[tuple[str, str, str], ...] = (("mAP", "mAP", "{:.4f}"), ("NDS", "NDS", "{:.4f}"))
WAYMO_ROWS: tuple[tuple[str, str, str], ...] = tuple(
    (f"{m} ({level})", f"{m}_{key}", "{:.4f}") for key, level in (("L1", "LEVEL_1"), ("L2", "LEVEL_2"))
    for m in ("mAP", "mAPH"))


def is_waymo(side: dict[str, Any]) -> bool:
    """Whether a side's metrics are the official Waymo metrics (else nuScenes DetectionEval's)."""
    return side.get("dataset") == "waymo"


def headline_map(side: dict[str, Any]) -> Optional[float]:
    """The mAP a side is judged by (and --min-map gates): nuScenes mAP, or Waymo's LEVEL_2 mAP."""
    return side.get("mAP_L2") if is_waymo(side) else side.get("mAP")


# Below this teacher mAP a teacher-vs-student comparison compares two detectors that learned nothing.
LEARNED_MAP = 0.05


def learned_nothing(score: Optional[float]) -> bool:
    """Whether a teacher's mAP is below ``LEARNED_MAP`` (None: not evaluated, nothing to judge)."""
    return score is not None and score < LEARNED_MAP


def teacher_notes(teacher: dict[str, Any], split: str) -> list[str]:
    """Say so when the teacher scored (almost) nothing: it has nothing to teach, and every accuracy row is ~0."""
    score = headline_map(teacher)
    if not learned_nothing(score):
        return []
    return [f"the teacher scores mAP {score:.4f} on {split}: too little to distil from, so the accuracy rows "
            "compare nothing; check that it was trained on this dataset and its classes, or train it longer"]


def kd_pulls(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per KD term, the mean and max over the logged steps of its ``pull_<term>`` (gradient on the student over
    the detection loss's, see ``distill.step.pull_ratios``)."""
    out: dict[str, dict[str, float]] = {}
    names = sorted({k for r in records for k in r if k.startswith("pull_")})
    for key in names:
        values = [float(r[key]) for r in records if key in r]
        out[key.removeprefix("pull_")] = {"mean": sum(values) / len(values), "max": max(values)}
    return out


# Mean pull above which a term is said to outweigh detection. With an unlabeled pool the detection loss reads only
# the labeled frames and the measured-better lambda (0.5) pulls the head term 1.0-1.4x (benchmarks/RESULTS.md).
PULL_NOTE, POOL_PULL_NOTE = 1.0, 2.0


def pull_notes(pulls: dict[str, dict[str, float]], pooled: bool) -> list[str]:
    """Say so when a KD term pulls the student harder than its labels do, on average over training (``pooled``:
    the run mixed in an unlabeled pool, where more pull is expected and measured better)."""
    limit = POOL_PULL_NOTE if pooled else PULL_NOTE
    strong = {name: p["mean"] for name, p in pulls.items() if p["mean"] > limit}
    return [f"KD outweighs detection: the {name} term's gradient on the student is {ratio:.1f}x the detection "
            "loss's (mean over training); lower the method's lambda (distill.itkd.lam, distill.baseline.lam) or "
            "that term's weight" for name, ratio in strong.items()]


# Under this many teacher boxes per unlabeled frame (mean over training) the pool gives the KD terms almost no object.
FEW_POOL_BOXES = 0.5
POOL_KEYS = ("source", "split", "folder", "ratio", "score_threshold")


def pool_boxes(records: list[dict[str, Any]]) -> tuple[Optional[float], int]:
    """Mean teacher boxes per unlabeled frame over the logged steps (``unlabeled_boxes``, weighted by each step's
    ``unlabeled_frames``), and how many logged steps held unlabeled frames; (None, 0) when none did."""
    steps = [r for r in records if "eval" not in r and r.get("unlabeled_frames", 0) > 0]
    frames = sum(float(r["unlabeled_frames"]) for r in steps)
    if not frames:
        return None, 0
    return sum(float(r["unlabeled_boxes"]) * float(r["unlabeled_frames"]) for r in steps) / frames, len(steps)


def pool_facts(cfg: dict[str, Any], before: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json's ``unlabeled``: the pool's settings (``dataset.unlabeled``), its frame count and pre-flight
    (``before``), and the mean teacher boxes per unlabeled frame over training (``train/metrics.jsonl``)."""
    mean, steps = pool_boxes(records)
    return {**{k: cfg.get(k) for k in POOL_KEYS}, **before, "teacher_boxes_per_frame": mean, "logged_steps": steps}


def pool_notes(facts: Optional[dict[str, Any]], method: str, configured: bool) -> list[str]:
    """Say so when the pool was set but not used, when no logged step measured it, or when the teacher gave its
    frames (almost) no box above the threshold: training then learned (almost) nothing from it."""
    if facts is None:
        return ([f"dataset.unlabeled is set, but distill.method {method} learns from the labels alone: the pool was "
                 "not used"] if configured and method == "none" else [])
    mean, threshold = facts.get("teacher_boxes_per_frame"), facts.get("score_threshold")
    if mean is None:
        return ["no logged training step held frames of the unlabeled pool: what the teacher found in them is not "
                "measured (train.log_every)"]
    if mean >= FEW_POOL_BOXES:
        return []
    uses = {"itkd": "itKD's head attention and MSE at centres", "sparsekd": "sparsekd's teacher labels"}.get(method)
    what = f"{uses} learned from almost no object there" if uses else "its heatmaps there were almost all background"
    return [f"the teacher gave {mean:.2f} boxes above dataset.unlabeled.score_threshold {threshold:g} per unlabeled "
            f"frame (mean over {facts.get('logged_steps')} logged steps): {what}; lower the threshold, or check that "
            "the pool is the teacher's kind of data"]


def _fmt(value: Any, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def comparison_rows(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, teacher, student, student/teacher) rows for the headline numbers."""
    rows = []
    accuracy = WAYMO_ROWS if is_waymo(teacher) or is_waymo(student) else NUSCENES_ROWS
    for label, key, fmt in (*ROWS, *accuracy):
        t, s = teacher.get(key), student.get(key)
        ratio = f"{s / t:.3f}" if t and s is not None else "n/a"
        rows.append((label, _fmt(t, fmt), _fmt(s, fmt), ratio))
    return rows


def per_class_rows(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(class, teacher AP, student AP) for every class either side reports."""
    data = ap_per_class(teacher, student)
    return [(n, _fmt(t, "{:.4f}"), _fmt(s, "{:.4f}")) for n, t, s in zip(data["classes"], data["teacher"], data["student"])]


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """Records of a run's metrics.jsonl (empty when the run logged nothing)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_jsonl: Path, out_png: Path, title: str) -> Optional[Path]:
    """Plot every logged training loss against the step (and eval mAP/NDS if logged) into a PNG."""
    records = read_metrics_log(metrics_jsonl)
    steps = [r for r in records if "eval" not in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    # not losses (a gradient norm dwarfs them; counts of the unlabeled pool's frames and boxes)
    skip = {"step", "epoch", "lr", "sec_per_step", "lam", "grad_norm", "unlabeled_frames", "unlabeled_boxes"}
    keys = [k for k in steps[0]
            if k not in skip and not k.startswith("pull_") and isinstance(steps[0][k], (int, float))]
    evals = [r for r in records if "eval" in r]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in keys:
        ax.plot([r["step"] for r in steps if key in r], [r[key] for r in steps if key in r], label=key)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title(title), ax.legend(fontsize=7)
    if evals:
        ax2 = axes[0][1]
        for key in ("mAP", "NDS", "mAP_L2", "mAPH_L2"):
            pts = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=key)
        ax2.set_xlabel("step"), ax2.set_title("validation"), ax2.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)


def ap_per_class(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, list]:
    """{classes, teacher, student, metric}: the AP of every class either side reports (None where a side has
    none); Waymo's is the LEVEL_2 APH, its official metric."""
    key = "mAPH_L2" if is_waymo(teacher) or is_waymo(student) else "AP"
    t_ap = {k: v.get(key) for k, v in (teacher.get("per_class") or {}).items()}
    s_ap = {k: v.get(key) for k, v in (student.get("per_class") or {}).items()}
    names = list(dict.fromkeys([*t_ap, *s_ap]))
    return {"classes": names, "teacher": [t_ap.get(n) for n in names], "student": [s_ap.get(n) for n in names],
            "metric": "APH (LEVEL_2)" if key == "mAPH_L2" else "AP"}


def plot_ap_per_class(report: dict[str, Any], out_png: Path) -> Optional[dict[str, list]]:
    """Bar chart of AP per class, teacher beside student, into a PNG; returns the bar heights drawn
    ({classes, teacher, student}), or None when neither side reports a class."""
    data = ap_per_class(report["teacher"], report["student"])
    if not data["classes"]:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    n = len(data["classes"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4))
    x = list(range(n))
    drawn = {}
    for side, shift, color in (("teacher", -0.2, "#4c72b0"), ("student", 0.2, "#dd8452")):
        heights = [v or 0.0 for v in data[side]]
        score = headline_map(report[side])
        label = f"{side} (mAP {score:.3f})" if score is not None else side
        bars = ax.bar([i + shift for i in x], heights, width=0.4, label=label, color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        drawn[side] = [float(b.get_height()) for b in bars]
    ax.set_xticks(x, data["classes"], rotation=30, ha="right")
    ax.set_ylim(0, max(1e-3, *drawn["teacher"], *drawn["student"]) * 1.15)
    ax.set_ylabel(data["metric"]), ax.set_title(f"{data['metric']} per class on {report.get('split', 'val')}: teacher vs student")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return {"classes": data["classes"], **drawn}
