"""The recipe loader and fields of earlier itkd versions: removed and folded fields are refused by name, a
checkpoint's stored recipe of an earlier version still loads."""

from __future__ import annotations

import pytest

from itkd_cli.core.errors import ItkdError
from itkd_cli.distill import kd_lambda

from itkd_cli.recipe.load import RecipeError, drop_legacy, load_recipe, recipe_from_dict
from itkd_cli.recipe.schema import FOLDED_FIELDS, REMOVED_FIELDS

# A value each field of an earlier itkd accepted (its old default or a typical setting).
LEGACY_VALUES = {
    "distill.itkd.tap": "neck",
    "distill.itkd.head_smooth_beta": "0.5",
    "distill.lam_schedule": "constant",
    "distill.kd_until": "0.5",
    "distill.itkd.head_fusion_guard": "normalize",
    "distill.kd_warmup": "0.1",
    "distill.teacher_bn": "batch",
    "distill.itkd.head_standardize": "true",
    "distill.itkd.detach_student_target": "true",
    "distill.itkd.adapter_init": "selection",
    "distill.itkd.cr_normalize": "true",
    "distill.itkd.cr_trains_encoder": "false",
}


def test_legacy_values_cover_every_removed_and_folded_field():
    assert set(LEGACY_VALUES) == set(REMOVED_FIELDS) | set(FOLDED_FIELDS)
    assert not set(REMOVED_FIELDS) & set(FOLDED_FIELDS)


@pytest.mark.parametrize("key", list(LEGACY_VALUES))
def test_recipe_refuses_a_removed_or_folded_field(key):
    """One line naming the field and why, blamed on the --set that wrote it; never silently ignored."""
    item = f"{key}={LEGACY_VALUES[key]}"
    with pytest.raises(RecipeError) as info:
        load_recipe("synth-pillar", [item])
    assert isinstance(info.value, ItkdError)
    problems = info.value.problems
    assert len(problems) == 1 and "\n" not in problems[0]
    line = problems[0]
    assert line.startswith(f"--set {item}: {key}: ")
    if key in REMOVED_FIELDS:
        why, last = REMOVED_FIELDS[key]
        assert "removed" in line and why in line and f"itkd {last} still has it" in line
    else:
        assert "folded into distill.itkd.form" in line


def test_recipe_file_with_legacy_fields_names_each_and_blames_the_file(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("extends: synth-pillar\n"
                      "distill:\n  kd_until: 0.5\n  itkd:\n    adapter_init: selection\n    lam: 0.5\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{recipe}: distill.kd_until: removed")
    assert problems[1].startswith(f"{recipe}: distill.itkd.adapter_init: folded into distill.itkd.form")


def test_stored_recipe_of_an_earlier_itkd_loads_without_its_legacy_fields():
    """A checkpoint's recipe from before distill.itkd.form: legacy keys dropped, lambda back to the form's."""
    base = load_recipe("synth-pillar")
    old = base.model_dump(mode="json")
    old["distill"]["lam_schedule"] = "constant"
    old["distill"]["kd_until"] = 1.0
    old["distill"].update({"kd_warmup": 0.1, "teacher_bn": "batch"})
    old["distill"]["itkd"].update({"head_standardize": False, "adapter_init": "random", "tap": "neck", "lam": 0.5})
    kept = {"distill": {"itkd": dict(old["distill"]["itkd"])}}
    got = recipe_from_dict(old)
    assert got.distill.itkd.lam is None and got.distill.itkd.form == "default" and kd_lambda(got.distill, False) == 0.1
    assert got == base
    assert old["distill"]["itkd"] == kept["distill"]["itkd"]  # the caller's dict is left as it was
    dropped = drop_legacy(old)
    assert not {"lam_schedule", "kd_until", "kd_warmup", "teacher_bn"} & set(dropped["distill"])
    assert not {"head_standardize", "adapter_init", "tap", "lam"} & set(dropped["distill"]["itkd"])


def test_stored_recipe_of_this_itkd_keeps_its_lambda():
    """No legacy field: nothing is dropped, an explicit lambda and the form survive the round trip."""
    recipe = load_recipe("synth-pillar", ["distill.itkd.form=paper", "distill.itkd.lam=0.3"])
    got = recipe_from_dict(recipe.model_dump(mode="json"))
    assert got == recipe and got.distill.itkd.lam == 0.3 and got.distill.itkd.form == "paper"
