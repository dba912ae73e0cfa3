"""`itkd export --onnx` on a tiny pillar model fed REAL frames (shared nuScenes fixture through our pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_export_helpers import SPLIT, tiny_checkpoint

from itkd_cli.core.errors import JobFailed
from itkd_cli.core.types import Detections


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, ExportResult) of one tiny pillar export (raw head outputs)."""
    from itkd_cli.pipeline.export_run import export_checkpoint

    tmp = tmp_path_factory.mktemp("export")
    ck = tiny_checkpoint("pillar", tmp)
    return ck, export_checkpoint(ck, tmp / "out", split=SPLIT, latency_runs=1)


def test_pillar_parity_on_two_frames_with_different_pillar_counts(exported):
    _, res = exported
    assert res.graph == "pillar_full"
    assert len(res.reports) == 2
    counts = [r.frame.pillars for r in res.reports]
    assert counts[0] != counts[1], "the two frames must differ in pillar count to prove the dynamic axis"
    for r in res.reports:
        assert not r.problems
        assert [o.name for o in r.outputs][:6] == ["task0_hm", "task0_center", "task0_center_z", "task0_dim",
                                                   "task0_rot", "task0_vel"]
        assert all(o.torch_shape == o.ort_shape for o in r.outputs)
        assert max(o.max_abs for o in r.outputs) < 1e-4
        assert r.decoded.torch_count == r.decoded.ort_count > 0
        assert r.decoded.unexplained == 0 and r.decoded.max_box_diff < 1e-3


def test_onnx_file_is_self_contained_checked_and_has_dynamic_pillar_axis(exported):
    import onnx
    import onnxruntime as ort

    _, res = exported
    assert not list(res.onnx.parent.glob("*.onnx.data"))
    onnx.checker.check_model(str(res.onnx), full_check=True)
    sess = ort.InferenceSession(str(res.onnx), providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes == {"features": ["P", 20, 5], "num_points": ["P"], "coords": ["P", 4]}


def test_metadata_lets_a_deployment_decode_without_our_code(exported):
    import onnx

    from itkd_cli.export.metadata import read_metadata
    from itkd_cli.recipe import recipe_from_dict

    ck, res = exported
    meta = read_metadata(onnx.load(str(res.onnx)).metadata_props)
    stored = torch.load(ck, weights_only=True)["recipe"]
    assert recipe_from_dict(meta["itkd.recipe"]).model == recipe_from_dict(stored).model
    assert meta["tasks"] == [["car"], ["pedestrian"]] and meta["class_names"] == ["car", "pedestrian"]
    assert meta["voxel_size"] == [0.32, 0.32, 8.0]
    assert meta["point_range"] == [-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]
    assert meta["feature_map_stride"] == 2 and meta["head_map_size"] == [64, 64]
    assert list(meta["outputs"]) == res.info["outputs"]
    assert meta["outputs"]["task1_hm"]["shape"] == [1, 1, 64, 64]
    assert set(meta["inputs"]) == {"features", "num_points", "coords"}
    assert "exp(dim)" in meta["box_code"] and "atan2" in meta["box_code"]


def test_model_card_has_latency_verification_and_deployment_note(exported):
    _, res = exported
    text = res.card.read_text()
    for part in ("## Latency on this machine", "PyTorch eager", "onnxruntime", "## Verification",
                 "task0_hm", "## Deployment note", "parameters:", "MACs"):
        assert part in text


def test_export_json_records_the_verification_figures(exported):
    """<stem>.export.json beside the .onnx: what `itkd export --json` prints, for `itkd report` to show."""
    ck, res = exported
    record = json.loads((res.onnx.parent / f"{ck.stem}.export.json").read_text())
    assert record == json.loads(json.dumps(res.to_dict()))
    assert record["verified"] and len(record["frames"]) == 2 and record["latency_ms"]["onnxruntime"] > 0


def _corrupt(src, dst) -> None:
    """Add 1.0 to the largest float initializer of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.data_type == 1 else -1)
    arr = numpy_helper.to_array(init) + np.float32(1.0)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(proto, str(dst))


def test_corrupted_weight_in_onnx_is_caught_and_file_named(exported, tmp_path):
    from itkd_cli.data.frames import sample_frames
    from itkd_cli.export.api import graph_frames, load_for_export
    from itkd_cli.export.verify import verify_onnx
    from itkd_cli.export.wrappers import build_graph, output_names

    ck, res = exported
    bad = tmp_path / "broken.onnx"
    _corrupt(res.onnx, bad)
    model, recipe, _ = load_for_export(ck)
    frames = graph_frames(model, recipe, sample_frames(recipe, SPLIT))
    graph = build_graph(model, recipe.model, recipe.dataset.class_names, False)
    with pytest.raises(JobFailed) as err:
        verify_onnx(bad, graph, frames, output_names(recipe.model, False), recipe, False, 1e-3)
    assert err.value.exit_code == 1
    assert str(bad) in err.value.message and "max |diff|" in err.value.message
    assert bad.is_file()  # kept for inspection


def test_cli_missing_checkpoint_is_one_line_exit_2(cli, tmp_path):
    result = cli("export", "--onnx", "--checkpoint", tmp_path / "nope.pth", "--out", tmp_path)
    assert result.exit_code == 2
    assert "nope.pth" in result.output and "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error:")]) == 1


def test_cli_unwritable_out_dir_is_exit_2(cli, exported, tmp_path):
    ck, _ = exported
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = cli("export", "--onnx", "--checkpoint", ck, "--out", blocker / "sub")
    assert result.exit_code == 2
    assert "a_file" in result.output and "Traceback" not in result.output


def test_cli_without_a_format_is_exit_2(cli, exported):
    ck, _ = exported
    result = cli("export", "--checkpoint", ck)
    assert result.exit_code == 2 and "--onnx" in result.output


def test_result_json_is_serialisable(exported):
    _, res = exported
    data = json.loads(json.dumps(res.to_dict(), default=str))
    assert data["verified"] and len(data["frames"]) == 2 and data["latency_ms"]["onnxruntime"] > 0


# ----------------------------------------------------------------------- decoded-box comparison
def _dets(boxes, scores, labels) -> Detections:
    return Detections(torch.tensor(boxes, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64),
                      torch.tensor(labels))


def test_compare_detections_matches_reordered_boxes_and_flags_moved_ones():
    from itkd_cli.export.verify import compare_detections

    a = _dets([[0, 0, 0, 4, 2, 1.5, 0.1, 0, 0], [10, 5, 0, 1, 1, 1, 3.1, 0, 0]], [0.9, 0.5], [0, 1])
    b = _dets([[10, 5, 0, 1, 1, 1, -3.1831853, 0, 0], [0, 0, 0, 4, 2, 1.5, 0.1, 0, 0]], [0.5, 0.9], [1, 0])
    same = compare_detections(a, b, threshold=0.1, atol=1e-3)
    assert (same.torch_count, same.ort_count, same.unexplained) == (2, 2, 0)
    assert same.max_box_diff < 1e-6  # yaw 3.1 vs 3.1 - 2 pi is the same angle
    moved = _dets([[0, 0, 0, 4, 2, 1.5, 0.1, 0, 0], [10, 7, 0, 1, 1, 1, 3.1, 0, 0]], [0.9, 0.5], [0, 1])
    assert compare_detections(a, moved, threshold=0.1, atol=1e-3).unexplained == 2  # one each way


def test_compare_detections_tolerates_score_ties_and_threshold_band():
    from itkd_cli.export.verify import compare_detections

    # Two peaks with the same score: the runtimes may keep either one (top-K / NMS order of equal scores).
    ref = _dets([[0, 0, 0, 1, 1, 1, 0, 0, 0], [5, 0, 0, 1, 1, 1, 0, 0, 0]], [0.4, 0.4], [0, 0])
    got = _dets([[5, 0, 0, 1, 1, 1, 0, 0, 0], [9, 0, 0, 1, 1, 1, 0, 0, 0]], [0.4, 0.4], [0, 0])
    d = compare_detections(ref, got, threshold=0.1, atol=1e-3)
    assert d.unexplained == 0 and d.tie_ambiguous == 1
    # A tie of the other label does not excuse a moved box.
    lone = _dets([[0, 0, 0, 1, 1, 1, 0, 0, 0], [5, 0, 0, 1, 1, 1, 0, 0, 0]], [0.4, 0.4], [0, 1])
    moved = _dets([[0, 0, 0, 1, 1, 1, 0, 0, 0], [7, 0, 0, 1, 1, 1, 0, 0, 0]], [0.4, 0.4], [0, 1])
    assert compare_detections(lone, moved, threshold=0.1, atol=1e-3).unexplained == 2
    # A box scoring at the threshold may exist on one side only.
    edge = _dets([[0, 0, 0, 1, 1, 1, 0, 0, 0]], [0.1002], [0])
    none = _dets(np.zeros((0, 9)), [], [])
    assert compare_detections(edge, Detections(none.boxes, none.scores, none.labels.long()), 0.1, 1e-3).unexplained == 0
