"""Quality gates: thresholds on a finished run's numbers, as pure functions (the CLI parses, the stages measure).

A gate reads one number of the run (``compress_values`` / ``eval_values``), compares it with its threshold
(``evaluate``) and, when it fails, names itself in one line (``failure_lines``). A gate the command cannot
measure (mAPH of a nuScenes run, a drop without a teacher) is refused before any work (``check_applicable``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

from pydantic import ValidationError

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.core.io import write_json
from itkd_cli.pipeline.report import headline_map, is_waymo
from itkd_cli.recipe.schema import GatesConfig

NAMES: tuple[str, ...] = tuple(GatesConfig.model_fields)
FLAGS = {name: "--" + name.replace("_", "-") for name in NAMES}
# A binary float is not its decimal: mAP 0.30 - 0.27 is 0.030000000000000027, so a drop of exactly
# --max-drop 0.03 would fail without this slack.
EPS = 1e-9

# Gates a command cannot measure, with the reason (command, dataset) -> {gate: why}.
_NO_TEACHER = "needs the teacher: only `itkd compress` measures it"
UNMEASURABLE: dict[tuple[str, str], dict[str, str]] = {
    ("compress", "nuscenes"): {"min_maph": "mAPH is a Waymo metric and compress evaluates with the nuScenes "
                                           "DetectionEval; gate on --min-map / --min-nds"},
    ("eval", "nuscenes"): {"min_maph": "mAPH is a Waymo metric; this evaluation is nuScenes (--min-map / --min-nds)",
                           "max_drop": _NO_TEACHER, "min_speedup": _NO_TEACHER},
    ("compress", "waymo"): {"min_nds": "NDS is a nuScenes metric; gate Waymo on --min-maph (LEVEL_2) or --min-map"},
    ("eval", "waymo"): {"min_nds": "NDS is a nuScenes metric; gate Waymo on --min-maph (LEVEL_2) or --min-map",
                        "max_drop": _NO_TEACHER, "min_speedup": _NO_TEACHER},
}


class GateResult(NamedTuple):
    """One gate checked: its threshold, the measured value (None: not measured) and whether it passed."""

    name: str
    threshold: float
    value: Optional[float]
    passed: bool
    metric: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "value": self.value, "passed": self.passed,
                "metric": self.metric}


def from_flags(**values: Optional[float]) -> GatesConfig:
    """The gates given on the command line (None: not given), validated by the recipe schema.

    Raises:
        ItkdError: a threshold out of range, one line per flag (``--min-map: 1.5: ...``).
    """
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return GatesConfig.model_validate(given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{FLAGS.get(name, name)}: {given.get(name)!r}: {err['msg'].lower()}")
        raise ItkdError("\n".join(lines), hint="thresholds are fractions in [0, 1] (mAP, NDS, mAPH, drop), "
                                              "a ratio above 0 (speed-up) or a count (params)") from None


def merge(recipe_gates: GatesConfig, flags: GatesConfig) -> GatesConfig:
    """The recipe's gates with every threshold given on the command line replacing the recipe's."""
    return recipe_gates.model_copy(update=flags.model_dump(exclude_none=True))


def active(gates: GatesConfig) -> dict[str, float]:
    """{gate name: threshold} of the gates that are set."""
    return gates.model_dump(exclude_none=True)


def check_applicable(gates: GatesConfig, command: str, dataset: str, has_model: bool = True,
                     source: str = "flags") -> None:
    """Refuse the gates this command cannot measure, before it does any work.

    Args:
        gates: thresholds to check.
        command: "compress" or "eval".
        dataset: "nuscenes" or "waymo" (what the command evaluates on).
        has_model: False when eval scores prediction files (no network: no parameter count).
        source: "flags" names them --min-map, "recipe" names them gates.min_map.

    Raises:
        ItkdError: one line per gate that cannot be measured (exit 2).
    """
    refused = dict(UNMEASURABLE.get((command, dataset), {}))
    if not has_model:
        refused["max_params"] = "scoring prediction files: there is no network to count"
    label = FLAGS.get if source == "flags" else (lambda name: f"gates.{name}")
    lines = [f"{label(name)}: cannot be checked by `itkd {command}` on {dataset}: {refused[name]}"
             for name in active(gates) if name in refused]
    if lines:
        raise ItkdError("\n".join(lines), hint="drop that gate or check it with the command that measures it")


def _ratio(num: Any, den: Any) -> Optional[float]:
    return float(num) / float(den) if num is not None and den else None


def compress_values(report: Mapping[str, Any]) -> dict[str, tuple[str, Optional[float]]]:
    """{gate: (what is measured, value)} of a compress report: the student's numbers, and teacher vs student."""
    t, s = report.get("teacher", {}), report.get("student", {})
    t_map, s_map = headline_map(t), headline_map(s)
    drop = t_map - s_map if t_map is not None and s_map is not None else None
    level = " LEVEL_2" if is_waymo(s) else ""
    return {"min_map": (f"student mAP{level}", s_map), "min_nds": ("student NDS", s.get("NDS")),
            "min_maph": ("student mAPH LEVEL_2", s.get("mAPH_L2")),
            "max_drop": (f"mAP{level} drop (teacher - student)", drop),
            "min_speedup": ("latency teacher / student (CPU PyTorch eager)",
                            _ratio(t.get("latency_ms"), s.get("latency_ms"))),
            "max_params": ("student params", s.get("params"))}


def eval_values(metrics: Mapping[str, Any], params: Optional[int]) -> dict[str, tuple[str, Optional[float]]]:
    """{gate: (what is measured, value)} of an evaluation: nuScenes mAP / NDS, or Waymo LEVEL_2 mAP / mAPH."""
    waymo = metrics.get("dataset") == "waymo"
    return {"min_map": ("mAP LEVEL_2", metrics.get("mAP_L2")) if waymo else ("mAP", metrics.get("mAP")),
            "min_nds": ("NDS", metrics.get("NDS")), "min_maph": ("mAPH LEVEL_2", metrics.get("mAPH_L2")),
            "max_params": ("params", params)}


def evaluate(gates: GatesConfig, values: Mapping[str, tuple[str, Optional[float]]]) -> list[GateResult]:
    """Check every set gate against its measured value; a value that was not measured fails its gate."""
    out = []
    for name, threshold in active(gates).items():
        metric, value = values.get(name, (name, None))
        if value is None:
            passed = False
        elif name.startswith("min_"):
            passed = value >= threshold - EPS
        else:
            passed = value <= threshold + EPS
        out.append(GateResult(name, threshold, value, passed, metric))
    return out


def show_value(name: str, value: float) -> str:
    """A gate's value or threshold as people read it: params 1,234,567; speed-up 4.00x; metrics 0.3012."""
    if name == "max_params":
        return f"{int(value):,}"
    return f"{value:.2f}x" if name == "min_speedup" else f"{value:.4f}"


def failure_lines(results: list[GateResult]) -> list[str]:
    """One line per failed gate: ``gate --min-map failed: student mAP 0.0123 is below 0.99``."""
    lines = []
    for r in results:
        if r.passed:
            continue
        threshold = show_value(r.name, r.threshold) if r.name == "max_params" else f"{r.threshold:g}"
        threshold += "x" if r.name == "min_speedup" else ""
        if r.value is None:
            lines.append(f"gate {FLAGS[r.name]} failed: {r.metric} was not measured (threshold {threshold})")
        else:
            side = "below" if r.name.startswith("min_") else "above"
            lines.append(f"gate {FLAGS[r.name]} failed: {r.metric} {show_value(r.name, r.value)} is {side} {threshold}")
    return lines


def summary(results: list[GateResult]) -> str:
    """``gates: 3 passed, 1 failed`` (``gates: none set`` without any)."""
    if not results:
        return "gates: none set"
    failed = sum(not r.passed for r in results)
    return f"gates: {len(results) - failed} passed" + (f", {failed} failed" if failed else "")


def fields(results: list[GateResult]) -> dict[str, Any]:
    """What a report or metrics.json carries: ``gates`` ([{name, threshold, value, passed, metric}]) and
    ``gates_passed`` (true without any gate)."""
    return {"gates": [r.to_dict() for r in results], "gates_passed": all(r.passed for r in results)}


def record(path: Path, data: dict[str, Any], results: list[GateResult]) -> dict[str, Any]:
    """``data`` with the gates' ``fields``, rewritten atomically to ``path`` (an evaluation's metrics.json)."""
    data.update(fields(results))
    write_json(path, data)
    return data


def raise_if_failed(results: list[GateResult], written: Path) -> None:
    """Exit 1 naming every failed gate, once the run's outputs are written (``written`` says where).

    Raises:
        JobFailed: at least one gate failed.
    """
    lines = failure_lines(results)
    if lines:
        raise JobFailed("\n".join(lines), hint=f"the job's outputs are written; the gates are in {written}")
