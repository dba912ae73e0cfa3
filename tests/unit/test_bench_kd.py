"""benchmarks/bench_kd.py: argument errors before any work, and the paired statistics against hand-computed values."""

from __future__ import annotations

import math

import pytest

ROW = {0: 0.30, 1: 0.34, 2: 0.35}
REF = {0: 0.28, 1: 0.30, 2: 0.33}
TEACHER = 0.50


@pytest.mark.parametrize("args, message", [
    (["--rows", "alone", "magic"], "--rows: unknown 'magic'"),
    (["--eval-seed", "0"], "--eval-seed must differ from 0"),
    (["--seeds", "1", "1"], "each seed once"),
    (["--unlabeled-scenes", "0"], "--unlabeled-scenes: at least 1"),
])
def test_bad_arguments_exit_2_before_anything_is_made(bench, tmp_path, capsys, args, message):
    out = tmp_path / "kd"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", str(out), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_paired_difference_interval_and_gap_closed_by_hand(bench):
    c = bench.paired(ROW, REF, TEACHER)
    # differences 0.02, 0.04, 0.02: mean 0.026667, sample std 0.011547, t(0.95, 2 dof) = 2.919986
    half = 2.919986 * 0.011547 / math.sqrt(3)
    gap = TEACHER - (0.28 + 0.30 + 0.33) / 3  # 0.196667
    assert c["n"] == 3 and c["gap"] == pytest.approx(gap)
    assert c["diff"] == pytest.approx(0.026667, abs=1e-6)
    assert (c["diff_lo"], c["diff_hi"]) == pytest.approx((0.026667 - half, 0.026667 + half), abs=1e-5)
    assert c["closed"] == pytest.approx(0.026667 / gap, abs=1e-5)  # 0.1356
    assert c["closed_lo"] == pytest.approx((0.026667 - half) / gap, abs=1e-4)


def test_pairing_uses_only_the_seeds_both_rows_have(bench):
    c = bench.paired({0: 0.30, 5: 0.9}, REF, TEACHER)
    assert c["n"] == 1 and c["diff"] == pytest.approx(0.02) and c["diff_lo"] is None  # one pair: no interval
    assert bench.paired({7: 0.3}, REF, TEACHER)["n"] == 0


def test_no_gap_means_no_fraction(bench):
    c = bench.paired(ROW, {0: 0.6, 1: 0.6, 2: 0.6}, TEACHER)  # reference above the teacher
    assert c["diff"] is not None and c["closed"] is None and c["closed_lo"] is None


def test_noise_floor_by_hand(bench):
    # reference std 0.025166 over the gap 0.196667
    assert bench.noise_floor(REF, TEACHER) == pytest.approx(0.025166 / 0.196667, abs=1e-4)
    assert bench.noise_floor({0: 0.3}, TEACHER) is None


def test_summary_checks_the_teacher_against_its_copy(bench):
    scores = {name: {s: {"bench": v, "val": v} for s, v in values.items()}
              for name, values in {"alone": REF, "itkd": ROW, "copy alone": {0: 0.55, 1: 0.56, 2: 0.57},
                                   "copy itkd": {0: 0.56, 1: 0.57, 2: 0.57}}.items()}
    s = bench.summarise(scores, {"bench": TEACHER, "val": TEACHER})
    assert s["convergence"]["converged"] is False  # every copy beats the teacher: it was not trained out
    rows = {r["row"]: r for r in s["rows"]}
    assert rows["alone"]["paired"] is None and rows["itkd"]["paired"]["closed"] == pytest.approx(0.1356, abs=1e-4)
    assert rows["copy alone"]["reference"] == "copy alone"
    copy_kd = rows["copy itkd"]["paired"]
    assert copy_kd["diff"] == pytest.approx(0.02 / 3) and copy_kd["closed"] is None  # no gap at ratio 1.0
    md = bench.markdown(s, "python bench_kd.py")
    assert "| itkd | 0.25 | 3 |" in md and "+0.14 [" in md and "teacher converged" in md and ": NO" in md
    assert "noise floor (student alone's seed std / gap): 12.8%" in md


def test_a_student_alone_above_the_teacher_is_said_not_hidden(bench):
    scores = {name: {s: {"bench": v, "val": v} for s, v in values.items()}
              for name, values in {"alone": {0: 0.52, 1: 0.51, 2: 0.53}, "itkd": ROW}.items()}
    s = bench.summarise(scores, {"bench": TEACHER, "val": TEACHER})
    assert s["gap"] == pytest.approx(-0.02) and s["noise_floor"] is None
    md = bench.markdown(s, "python bench_kd.py")
    assert "NO GAP: the student alone scores 0.0200 above the teacher" in md
    assert "floor (student alone's seed std / gap): n/a" in md
    below = bench.summarise({"alone": scores["itkd"]}, {"bench": TEACHER, "val": TEACHER})
    assert "NO GAP" not in bench.markdown(below, "python bench_kd.py")


def test_the_oracle_world_labels_the_pool_scenes_and_keeps_the_val_split(bench, tmp_path, monkeypatch):
    import json

    from itkd_cli.data.synth import render

    small = render.generate
    monkeypatch.setattr(render, "generate", lambda out, **kw: small(out, **{**kw, "preset": "small"}))
    world = bench.make_world(tmp_path, "world", 0)  # small: 1 train scene, 1 val scene, 3 keyframes each
    pool = bench.make_world(tmp_path, "world_unlabeled2", 0, 2)
    oracle = bench.make_oracle_world(tmp_path, world, 2)
    splits = json.loads((oracle / render.VERSION / "splits.json").read_text())
    assert splits == {"synth_train": ["scene-0001", "scene-0003", "scene-0004"], "synth_val": ["scene-0002"],
                      "synth_pool": ["scene-0003", "scene-0004"]}
    assert bench.make_oracle_world(tmp_path, world, 2) == oracle  # reused as it is
    keyframes = sorted((oracle / "samples").rglob("*.bin"))  # of all 4 scenes, in both worlds
    pooled = {p.name: p.read_bytes() for p in (pool / "samples").rglob("*.bin")}
    assert len(keyframes) == len(pooled) and all(p.read_bytes() == pooled[p.name] for p in keyframes)
    annotated = json.loads((oracle / render.VERSION / "sample_annotation.json").read_text())
    unlabeled = json.loads((pool / render.VERSION / "sample_annotation.json").read_text())
    assert len(annotated) > len(unlabeled)  # the pool's scenes now carry boxes
    # 1 train scene x 3 keyframes at 4 a step: 1 step an epoch; 3 scenes x 3 at 8 a step: 2 steps an epoch
    assert bench.oracle_epochs(8, world, oracle, 4) == 4
