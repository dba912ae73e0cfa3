"""Teacher-vs-student report (markdown + JSON) and training curves (PNG) of a compress run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from itkd_cli.core.io import atomic_path, write_json, write_text

# Rows of the comparison table: (label, key in a side's dict, format).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("params", "params", "{:,.0f}"),
    ("MACs (G)", "gmacs", "{:.2f}"),
    ("CPU latency (ms)", "latency_ms", "{:.1f}"),
    ("mAP", "mAP", "{:.4f}"),
    ("NDS", "NDS", "{:.4f}"),
)


# Below this teacher mAP a teacher-vs-student comparison compares two detectors that learned nothing.
LEARNED_MAP = 0.05


def learned_nothing(score: Optional[float]) -> bool:
    """Whether a teacher's mAP is below ``LEARNED_MAP`` (None: not evaluated, nothing to judge)."""
    return score is not None and score < LEARNED_MAP


def teacher_notes(teacher: dict[str, Any], split: str) -> list[str]:
    """Say so when the teacher scored (almost) nothing: it has nothing to teach, and every accuracy row is ~0."""
    score = teacher.get("mAP")
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


def pull_notes(pulls: dict[str, dict[str, float]]) -> list[str]:
    """Say so when a KD term pulls the student harder than its labels do, on average over training."""
    strong = {name: p["mean"] for name, p in pulls.items() if p["mean"] > 1.0}
    return [f"KD outweighs detection: the {name} term's gradient on the student is {ratio:.1f}x the detection "
            "loss's (mean over training); lower the method's lambda (distill.itkd.lam, distill.baseline.lam) or "
            "that term's weight" for name, ratio in strong.items()]


def _fmt(value: Any, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def comparison_rows(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, teacher, student, student/teacher) rows for the headline numbers."""
    rows = []
    for label, key, fmt in ROWS:
        t, s = teacher.get(key), student.get(key)
        ratio = f"{s / t:.3f}" if t and s is not None else "n/a"
        rows.append((label, _fmt(t, fmt), _fmt(s, fmt), ratio))
    return rows


def per_class_rows(teacher: dict[str, Any], student: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(class, teacher AP, student AP) for every class either side reports."""
    t_ap = {k: v.get("AP") for k, v in (teacher.get("per_class") or {}).items()}
    s_ap = {k: v.get("AP") for k, v in (student.get("per_class") or {}).items()}
    names = list(dict.fromkeys([*t_ap, *s_ap]))
    return [(n, _fmt(t_ap.get(n), "{:.4f}"), _fmt(s_ap.get(n), "{:.4f}")) for n in names]


def _markdown(report: dict[str, Any]) -> str:
    t, s = report["teacher"], report["student"]
    lines = [f"# itkd compress report: {report['method']} student, ratio {report['ratio']} ({report['policy']} policy)", ""]
    lines += [f"- teacher: `{report['teacher_checkpoint']}`", f"- student: `{report['student_checkpoint']}`",
              f"- evaluated on split `{report['split']}` ({report.get('frames', 'all')} frames) with the official "
              "nuScenes DetectionEval (detection_cvpr_2019)", ""]
    lines += ["| | teacher | student | student / teacher |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in comparison_rows(t, s)]
    lines += ["", "## AP per class", "", "| class | teacher | student |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in per_class_rows(t, s)]
    if report.get("kd_pull"):
        lines += ["", "## KD pull on the student", "",
                  "Gradient norm of each weighted KD term on the student over the weighted detection loss's "
                  "(measured every 50 steps; above 1 the term outweighs the labels).", "",
                  "| term | mean | max |", "|---|---|---|"]
        lines += [f"| {name} | {p['mean']:.3f} | {p['max']:.3f} |" for name, p in report["kd_pull"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", "", *[f"- {note}" for note in report["notes"]]]
    if report.get("curves"):
        lines += ["", "## Training curves", "", f"![curves]({Path(report['curves']).name})"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.md atomically; returns both paths."""
    out_dir = Path(out_dir)
    return write_json(out_dir / "report.json", report), write_text(out_dir / "report.md", _markdown(report))


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

    skip = {"step", "epoch", "lr", "sec_per_step", "lam"}  # not losses
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
        for key in ("mAP", "NDS"):
            pts = [(r["step"], r["eval"][key]) for r in evals if key in r["eval"]]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=key)
        ax2.set_xlabel("step"), ax2.set_title("validation"), ax2.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)
