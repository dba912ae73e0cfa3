"""Quality gates as pure functions, on hand values: each gate passes and fails, names itself, refuses what its
command cannot measure, and validates its threshold like any recipe field."""

from __future__ import annotations

import pytest

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.pipeline import gates as g
from itkd_cli.recipe.load import RecipeError, load_recipe
from itkd_cli.recipe.schema import GatesConfig

# teacher 0.40 mAP / 20 ms, student 0.37 mAP / 5 ms: a drop of 0.03 (0.030000000000000027 in binary), 4x faster
REPORT = {"teacher": {"mAP": 0.40, "NDS": 0.45, "latency_ms": 20.0, "params": 4_000_000},
          "student": {"mAP": 0.37, "NDS": 0.42, "latency_ms": 5.0, "params": 1_000_000}}

# (gate, threshold that passes, threshold that fails, the failure line)
CASES = [
    ("min_map", 0.37, 0.38, "gate --min-map failed: student mAP 0.3700 is below 0.38"),
    ("min_nds", 0.40, 0.43, "gate --min-nds failed: student NDS 0.4200 is below 0.43"),
    ("max_drop", 0.03, 0.02, "gate --max-drop failed: mAP drop (teacher - student) 0.0300 is above 0.02"),
    ("min_speedup", 4.0, 4.5,
     "gate --min-speedup failed: latency teacher / student (CPU PyTorch eager) 4.00x is below 4.5x"),
    ("max_params", 1_000_000, 999_999, "gate --max-params failed: student params 1,000,000 is above 999,999"),
]


@pytest.mark.parametrize("name,good,bad,line", CASES)
def test_each_compress_gate_passes_and_fails(name, good, bad, line) -> None:
    values = g.compress_values(REPORT)
    (ok,) = g.evaluate(GatesConfig(**{name: good}), values)
    assert ok.passed and ok.name == name and ok.threshold == good  # the boundary value itself passes
    (ko,) = g.evaluate(GatesConfig(**{name: bad}), values)
    assert not ko.passed and ko.value == ok.value
    assert g.failure_lines([ok, ko]) == [line]
    assert ko.to_dict() == {"name": name, "threshold": bad, "value": ko.value, "passed": False, "metric": ko.metric}
    with pytest.raises(JobFailed, match="gate --") as exc:
        g.raise_if_failed([ok, ko], "run/report.json")
    assert exc.value.exit_code == 1 and str(exc.value) == line and "run/report.json" in exc.value.hint
    g.raise_if_failed([ok], "run/report.json")  # nothing failed: nothing raised


def test_the_values_gates_read() -> None:
    values = g.compress_values(REPORT)
    assert values["min_map"] == ("student mAP", 0.37) and values["max_params"] == ("student params", 1_000_000)
    assert values["max_drop"][1] == pytest.approx(0.03) and values["min_speedup"][1] == 4.0
    nusc = g.eval_values({"dataset": "nuscenes", "mAP": 0.3, "NDS": 0.4}, 123)
    assert nusc["min_map"] == ("mAP", 0.3) and nusc["min_nds"] == ("NDS", 0.4) and nusc["max_params"] == ("params", 123)
    waymo = g.eval_values({"dataset": "waymo", "mAP_L1": 0.6, "mAP_L2": 0.5, "mAPH_L2": 0.45}, None)
    assert waymo["min_map"] == ("mAP LEVEL_2", 0.5) and waymo["min_maph"] == ("mAPH LEVEL_2", 0.45)


def test_an_unmeasured_value_fails_its_gate() -> None:
    (r,) = g.evaluate(GatesConfig(min_speedup=2), g.compress_values({"teacher": {}, "student": {}}))
    assert not r.passed and r.value is None
    assert g.failure_lines([r]) == ["gate --min-speedup failed: latency teacher / student (CPU PyTorch eager) was "
                                    "not measured (threshold 2x)"]


def test_no_gate_set_passes_and_says_so() -> None:
    assert g.evaluate(GatesConfig(), g.compress_values(REPORT)) == []
    assert g.fields([]) == {"gates": [], "gates_passed": True} and g.summary([]) == "gates: none set"
    checked = g.evaluate(GatesConfig(min_map=0.3, max_drop=0.01), g.compress_values(REPORT))
    assert g.summary(checked) == "gates: 1 passed, 1 failed" and g.fields(checked)["gates_passed"] is False


def test_flags_override_the_recipe_gate_by_gate() -> None:
    merged = g.merge(GatesConfig(min_map=0.3, max_drop=0.05), g.from_flags(min_map=0.35, min_nds=None))
    assert g.active(merged) == {"min_map": 0.35, "max_drop": 0.05}


@pytest.mark.parametrize("flags,line", [
    ({"min_map": 1.5}, "--min-map: 1.5: input should be less than or equal to 1"),
    ({"min_nds": -0.1}, "--min-nds: -0.1: input should be greater than or equal to 0"),
    ({"max_drop": float("nan")}, "--max-drop: nan: input should be a finite number"),
    ({"min_speedup": 0.0}, "--min-speedup: 0.0: input should be greater than 0"),
    ({"max_params": 0}, "--max-params: 0: input should be greater than or equal to 1"),
])
def test_a_threshold_out_of_range_names_its_flag(flags, line) -> None:
    with pytest.raises(ItkdError) as exc:
        g.from_flags(**flags)
    assert str(exc.value) == line and exc.value.exit_code == 2


def test_recipe_gates_are_validated_like_any_field() -> None:
    assert load_recipe("synth-pillar", ["gates.min_map=0.3", "gates.max_drop=0.03"]).gates == \
        GatesConfig(min_map=0.3, max_drop=0.03)
    for item, field in (("gates.min_map=1.2", "gates.min_map"), ("gates.min_speedup=-1", "gates.min_speedup"),
                        ("gates.min_mAP=0.3", "gates.min_mAP")):
        with pytest.raises(RecipeError, match=f"--set {item}: {field}"):
            load_recipe("synth-pillar", [item])


@pytest.mark.parametrize("command,dataset,gates,has_model,refused", [
    ("compress", "nuscenes", {"min_maph": 0.3}, True, ["--min-maph"]),
    ("eval", "nuscenes", {"max_drop": 0.03, "min_speedup": 2, "min_maph": 0.3}, True,
     ["--min-maph", "--max-drop", "--min-speedup"]),
    ("eval", "waymo", {"min_nds": 0.3, "max_drop": 0.03}, True, ["--min-nds", "--max-drop"]),
    ("eval", "waymo", {"max_params": 10}, False, ["--max-params"]),
])
def test_a_gate_the_command_cannot_measure_is_refused_before_any_work(command, dataset, gates, has_model,
                                                                      refused) -> None:
    with pytest.raises(ItkdError) as exc:
        g.check_applicable(GatesConfig(**gates), command, dataset, has_model=has_model)
    lines = str(exc.value).splitlines()
    assert exc.value.exit_code == 2 and [line.split(":")[0] for line in lines] == refused
    assert all(f"cannot be checked by `itkd {command}` on {dataset}" in line for line in lines)


def test_gates_each_command_measures_are_accepted_and_recipe_gates_are_named_as_fields() -> None:
    g.check_applicable(GatesConfig(min_map=0.3, min_nds=0.3, max_drop=0.03, min_speedup=2, max_params=10),
                       "compress", "nuscenes")
    g.check_applicable(GatesConfig(min_map=0.3, min_nds=0.3, max_params=10), "eval", "nuscenes")
    g.check_applicable(GatesConfig(min_map=0.3, min_maph=0.3, max_params=10), "eval", "waymo")
    with pytest.raises(ItkdError, match=r"^gates\.min_maph: cannot be checked by `itkd compress`"):
        g.check_applicable(GatesConfig(min_maph=0.3), "compress", "nuscenes", source="recipe")
