"""The synthetic world's Waymo frames before the Waymo venv turns them into protos: the range image read
back by Waymo's pixel convention gives the points the labels were counted on, and labels follow Waymo's
classes (`tool.py write` and `convert` themselves are tested in tests/reference/test_waymo_convert.py)."""

from __future__ import annotations

import numpy as np
import pytest

from itkd_cli.data.points import points_in_boxes
from itkd_cli.data.synth.presets import get_preset
from itkd_cli.data.synth.waymo_writer import (
    CYCLIST, PEDESTRIAN, TOP, TOP_TRANSLATION, VEHICLE, SegmentRenderer, waymo_columns, waymo_type,
)


def pixel_rays(inclinations: np.ndarray, width: int) -> np.ndarray:
    """(H, W, 3) unit rays of Waymo's range image pixels, re-typed from the dataset's documented convention:
    row 0 is the highest beam; column c looks at azimuth pi - (c + 0.5) * 2 pi / W (extrinsic yaw 0)."""
    inc = inclinations[::-1][:, None]
    az = np.pi - (np.arange(width) + 0.5) * 2 * np.pi / width
    return np.stack(np.broadcast_arrays(np.cos(inc) * np.cos(az), np.cos(inc) * np.sin(az), np.sin(inc)), -1)


@pytest.fixture(scope="module")
def frame():
    from itkd_cli.data.synth.layout import build_world

    renderer = SegmentRenderer(get_preset("small"), frames=3, seed=0)
    world = build_world(np.random.default_rng([0, 0, 0]), renderer.preset, 3)
    arrays, points = renderer._frame(world, 0.5, 1_000_000, np.random.default_rng(1))
    return renderer, world, arrays, points


def test_range_image_reads_back_to_the_rendered_points(frame) -> None:
    renderer, _, arrays, count = frame
    ri = arrays[f"ri1_{TOP}"]
    assert ri.shape == (renderer.preset.beams, len(renderer.lidar.azim), 4) and ri.dtype == np.float32
    hit = ri[..., 0] > 0
    assert hit.sum() == count and count > 1000
    assert np.all(ri[~hit, 0] == -1.0) and np.all(ri[..., 3] == -1.0)  # no return: -1; no no-label zone
    rays = pixel_rays(arrays[f"inclinations_{TOP}"], ri.shape[1])
    xyz = rays[hit] * ri[hit, 0:1] + arrays[f"extrinsic_{TOP}"][:3, 3]
    # the same points by the caster's own rays (float32 range: sub-millimetre agreement)
    own = renderer.lidar.dirs[::-1][:, renderer.columns][hit] * ri[hit, 0:1].astype(np.float64) + TOP_TRANSLATION
    np.testing.assert_allclose(xyz, own, atol=1e-4)
    assert xyz[:, 2].min() > -0.1  # the ground is z = 0 in the vehicle frame: nothing below it


def test_labels_count_the_points_in_their_boxes(frame) -> None:
    _, _, arrays, _ = frame
    ri = arrays[f"ri1_{TOP}"]
    hit = ri[..., 0] > 0
    xyz = pixel_rays(arrays[f"inclinations_{TOP}"], ri.shape[1])[hit] * ri[hit, 0:1] + TOP_TRANSLATION
    boxes = arrays["label_boxes"]
    assert len(boxes) > 3 and set(arrays["label_types"].tolist()) <= {VEHICLE, PEDESTRIAN, CYCLIST}
    np.testing.assert_array_equal(points_in_boxes(xyz, boxes).sum(axis=0), arrays["label_num_points"])
    assert np.all(arrays["label_num_points"] > 0) and np.all(boxes[:, 2] == boxes[:, 5] / 2)  # boxes stand on z = 0
    assert arrays["pose"].shape == (4, 4) and np.allclose(arrays["pose"][:3, :3] @ arrays["pose"][:3, :3].T, np.eye(3))


def test_waymo_classes() -> None:
    assert waymo_type("car", "vehicle.moving") == waymo_type("motorcycle", "cycle.with_rider") == VEHICLE
    assert waymo_type("bicycle", "cycle.with_rider") == CYCLIST and waymo_type("bicycle", "cycle.without_rider") == 0
    assert waymo_type("pedestrian", "pedestrian.moving") == PEDESTRIAN
    assert waymo_type("traffic_cone", None) == waymo_type("barrier", None) == waymo_type(None, None) == 0


def test_waymo_columns_match_the_caster() -> None:
    """Caster column k looks at (k + 0.5) * step; Waymo's column c at pi - (c + 0.5) * step: the same angle."""
    width = 600
    step = 2 * np.pi / width
    k = waymo_columns(width)
    caster = (k + 0.5) * step
    waymo = np.pi - (np.arange(width) + 0.5) * step
    np.testing.assert_allclose(np.angle(np.exp(1j * (caster - waymo))), 0.0, atol=1e-9)
    assert sorted(k.tolist()) == list(range(width))


def test_unlabeled_segments_carry_no_labels_and_leave_the_others_as_they_were(tmp_path, monkeypatch) -> None:
    """render_waymo with the Waymo venv's `write` faked: what each segment would be written from."""
    import json
    from pathlib import Path

    from itkd_cli.data.synth import waymo_writer

    written: dict[str, dict[str, dict[str, np.ndarray]]] = {}

    def fake_write(command: str, record: Path, frames_dir: Path) -> None:
        assert command == "write"
        names = json.loads((Path(frames_dir) / "frames.json").read_text())["frames"]
        frames = {}
        for name in names:
            with np.load(Path(frames_dir) / name) as z:
                frames[name] = {k: z[k] for k in z.files}
        written[str(Path(record).relative_to(Path(record).parents[1]))] = frames
        Path(record).write_bytes(b"")

    monkeypatch.setattr(waymo_writer, "run_tool", fake_write)
    args = {"scenes": 2, "frames": 1, "seed": 0, "val_scenes": 1}
    (tmp_path / "a").mkdir()
    plain = waymo_writer.render_waymo(tmp_path / "a", get_preset("small"), args, None)
    before = dict(written)
    written.clear()
    (tmp_path / "b").mkdir()
    more = waymo_writer.render_waymo(tmp_path / "b", get_preset("small"), {**args, "unlabeled_scenes": 1}, None)
    assert plain["splits"] == {"training": 1, "validation": 1} and "unlabeled_scenes" not in plain
    assert more["splits"] == {"training": 1, "validation": 1, "unlabeled": 1} and more["unlabeled_frames"] == 2
    assert more["annotations"] == plain["annotations"] > 0
    unlabeled = written.pop("unlabeled/segment-synth-0-0003.tfrecord")
    assert written.keys() == before.keys()
    for record, frames in before.items():  # the labeled segments: the same arrays
        for name, arrays in frames.items():
            assert all(np.array_equal(arrays[k], written[record][name][k]) for k in arrays), (record, name)
    for arrays in unlabeled.values():
        assert arrays["label_boxes"].shape == (0, 7) and len(arrays["label_types"]) == len(arrays["label_ids"]) == 0
        assert (arrays[f"ri1_{TOP}"][..., 0] > 0).sum() > 1000  # its points are all there
