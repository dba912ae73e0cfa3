"""benchmarks/bench_compare.py: argument errors before any work, and the gap-closed arithmetic."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("args, message", [
    (["--variant", "lonely"], "expected NAME METHOD"),
    (["--variant", "x", "itkd", "distill.itkd.w_head"], "expected NAME METHOD"),
    (["--seed", "3", "--tune-seed", "3"], "--tune-seed must differ from --seed"),
])
def test_bad_arguments_exit_2_before_anything_is_made(bench, tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exc:
        bench.main(["--out", str(out), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # no world generated, no teacher trained


def test_gap_closed(bench):
    assert bench._gap_closed(0.30, 0.20, 0.40) == pytest.approx(0.5)
    assert bench._gap_closed(0.10, 0.20, 0.40) == pytest.approx(-0.5)
    assert bench._gap_closed(0.30, 0.35, 0.34) is None  # the student alone beats the teacher: no gap
    assert bench._gap_closed(None, 0.20, 0.40) is None


def test_only_with_no_names_prepares_world_and_teacher_and_stops(bench, tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(bench, "make_world", lambda out, *a: made.append("world") or out / "world")
    monkeypatch.setattr(bench, "make_teacher", lambda out, *a: made.append("teacher") or out / "teacher" / "last.pth")
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: pytest.fail("no student run was asked for"))
    assert bench.main(["--out", str(tmp_path / "cmp"), "--only"]) == 0
    assert made == ["world", "teacher"]
    assert "no student run asked for" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "comparison.md").exists()
