"""ONNX parity against PyTorch on real synthetic frames: voxel dense part, in-graph decoding, full CLI run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_export_helpers import SPLIT, tiny_checkpoint  # noqa: E402


@pytest.mark.slow
def test_voxel_model_dense_part_parity_via_cli(cli, tmp_path):
    """Voxel model: BEV map -> neck -> heads in ONNX; the sparse encoder (spconv) stays in PyTorch."""
    import onnx

    from itkd_cli.export.metadata import read_metadata

    ck = tiny_checkpoint("voxel", tmp_path, seed=1)
    result = cli("export", "--onnx", "--checkpoint", ck, "--out", tmp_path / "out", "--split", SPLIT, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["graph"] == "voxel_dense" and data["inputs"] == ["bev"]
    for frame in data["frames"]:
        assert max(o["max_abs"] for o in frame["outputs"].values()) < 1e-4
        assert frame["decoded"]["unexplained"] == 0
    # (1, 16 channels x 2 z cells, 256 / 8, 256 / 8) for the tiny voxel grid.
    meta = read_metadata(onnx.load(data["onnx"]).metadata_props)
    assert meta["inputs"]["bev"]["shape"] == [1, 32, 32, 32]
    assert "HeightCompression" in meta["deployment_note"] and "spconv" in meta["deployment_note"]
    assert "sparse 3D encoder" in result.stderr
    card = Path(data["card"]).read_text()
    assert "## Deployment note" in card and "CUDA-CenterPoint" in card


@pytest.mark.slow
def test_pillar_with_decode_returns_topk_boxes_matching_pytorch(tmp_path):
    from itkd_cli.pipeline.export_run import export_checkpoint

    ck = tiny_checkpoint("pillar", tmp_path, seed=2)
    res = export_checkpoint(ck, tmp_path / "out", with_decode=True, split=SPLIT, latency_runs=1)
    assert res.info["outputs"] == ["boxes", "scores", "labels"]
    for r in res.reports:
        shapes = {o.name: o.ort_shape for o in r.outputs}
        assert shapes == {"boxes": (200, 9), "scores": (200,), "labels": (200,)}  # 2 tasks x top_k 100
        assert max(o.max_abs for o in r.outputs if o.name != "boxes") < 1e-4
        assert r.decoded.torch_count == r.decoded.ort_count and r.decoded.unexplained == 0
    assert "no NMS" in res.card.read_text()


def test_cli_exit_1_when_the_exported_graph_is_wrong(cli, tmp_path, monkeypatch):
    """A graph that does not match PyTorch (a weight changed after export) -> exit 1, file named and kept."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import itkd_cli.export.api as api

    real_write = api.write_onnx

    def write_then_break(*args, **kwargs):
        path = real_write(*args, **kwargs)
        proto = onnx.load(str(path))
        init = next(t for t in proto.graph.initializer if t.data_type == 1 and len(t.dims) == 4)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
        onnx.save(proto, str(path))
        return path

    monkeypatch.setattr(api, "write_onnx", write_then_break)
    ck = tiny_checkpoint("pillar", tmp_path, seed=3)
    result = cli("export", "--onnx", "--checkpoint", ck, "--out", tmp_path / "out", "--split", SPLIT)
    assert result.exit_code == 1
    onnx_path = tmp_path / "out" / "pillar.onnx"
    assert str(onnx_path) in result.output and "parity" in result.output and onnx_path.is_file()
    assert "Traceback" not in result.output
