"""The Waymo worker's `convert` (a segment's TFRecord -> NNNN.npy + segment.json) on Frames with known range
images, built by its `write`: analytic points, waymo_open_dataset's own frame_utils, labels, resume, errors."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from itkd_cli.core import waymo_env
from itkd_cli.core.errors import ItkdError

import make_waymo_frames as mk  # tests/reference/, beside this file

CONTEXT = "itkd_convert_segment"
FRAMES = 3
# TOP: explicit, unevenly spaced beams; mounted 1.2 m ahead, 1.9 m up, turned 0.06 rad.
TOP_INC = -0.3 + 0.35 * np.linspace(0.0, 1.0, 16) ** 1.3
TOP_WIDTH, TOP_EXT = 360, mk.rigid(yaw=0.06, xyz=(1.2, -0.1, 1.9))
# FRONT: uniform beams given as (min, max); a small pitch and yaw.
FRONT_RANGE, FRONT_HEIGHT, FRONT_WIDTH = (-0.6, 0.1), 8, 120
FRONT_EXT = mk.rigid(pitch=0.02, yaw=-0.03, xyz=(3.8, 0.05, 0.7))
LASERS = ((mk.TOP, TOP_INC, TOP_WIDTH, TOP_EXT),
          (mk.FRONT, mk.uniform_inclinations(*FRONT_RANGE, FRONT_HEIGHT), FRONT_WIDTH, FRONT_EXT))
OBJECTS = [((12.3, 1.7, 0.8, 4.5, 2.0, 1.6, 0.3), mk.VEHICLE), ((8.6, -5.2, 0.9, 0.8, 0.8, 1.8, 1.0), mk.PEDESTRIAN),
           ((10.9, 6.4, 0.85, 1.8, 0.7, 1.7, -0.6), mk.CYCLIST)]
TOP_POSE_SHIFT = np.array([0.3, 0.0, 0.0])  # frame 1's TOP pixel poses: 0.3 m further along global x


def frame_pose(index: int) -> np.ndarray:
    """Non-identity vehicle -> global poses (roll, pitch, yaw and a translation)."""
    return mk.rigid(roll=0.01, pitch=-0.02, yaw=0.7 + 0.01 * index, xyz=(120.0 + index, -40.0, 3.0))


def laser_images(boxes: list, inclinations: np.ndarray, width: int, extrinsic: np.ndarray) -> dict:
    """Both returns of one laser: first = the nearest box face; second = that box's far side on every third
    column; the right half of the cyclist's pixels in a no-label zone. Also the analytic points."""
    rays = mk.pixel_rays(inclinations, width, extrinsic)
    near, far, owner = mk.cast(extrinsic[:3, 3], rays, boxes)
    hit = np.isfinite(near)
    cols = np.broadcast_to(np.arange(width), hit.shape)
    cyclist = hit & (owner == 2)
    nlz = cyclist & (cols > np.median(cols[cyclist]))
    second = hit & (cols % 3 == 0)
    ri1 = np.stack([np.where(hit, near, -1), np.where(hit, 2.0 + owner, 0), np.where(hit, 0.1, 0),
                    np.where(nlz, 1, -1)], -1).astype(np.float32)
    ri2 = np.stack([np.where(second, far, -1), np.where(second, 7.0, 0), np.where(second, 0.3, 0),
                    np.where(second & nlz, 1, -1)], -1).astype(np.float32)
    points = [_analytic(ri, rays, extrinsic[:3, 3]) for ri in (ri1, ri2)]
    return {"ri1": ri1, "ri2": ri2, "points": points, "nlz": int(nlz.sum()), "second": int(second.sum())}


def _analytic(ri: np.ndarray, rays: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(N, 5) x, y, z, intensity, elongation of the pixels with a return outside no-label zones, row-major."""
    keep = (ri[..., 0] > 0) & (ri[..., 3] == -1)
    xyz = origin + ri[..., 0:1].astype(np.float64) * rays
    return np.concatenate([xyz[keep], ri[keep][:, 1:3]], 1)


def build_frame(index: int) -> tuple[dict, dict]:
    """A frame's arrays for `write` and what convert must give: blocks[(return, laser)] (N, 5), labels."""
    boxes = [tuple(np.array(b) + [0.5 * index, 0, 0, 0, 0, 0, 0]) for b, _ in OBJECTS]
    pose = frame_pose(index)
    arrays = {"timestamp": np.int64(1_550_000_000_000_000 + 100_000 * index), "pose": pose,
              "laser_names": np.array([mk.FRONT, mk.TOP], np.int32)}  # any order: convert sorts them
    blocks = {}
    for name, inclinations, width, extrinsic in LASERS:
        images = laser_images(boxes, inclinations, width, extrinsic)
        assert images["nlz"] > 0 and images["second"] > 0  # the scene exercises both
        arrays.update({f"ri1_{name}": images["ri1"], f"ri2_{name}": images["ri2"], f"extrinsic_{name}": extrinsic,
                       f"inclinations_{name}": inclinations if name == mk.TOP else np.array(FRONT_RANGE)})
        for ret, points in enumerate(images["points"], 1):
            blocks[ret, name] = points
    if index == 1:  # explicit TOP pixel poses: the frame's roll, pitch, yaw and a shifted position
        rpy_xyz = np.array([0.01, -0.02, 0.7 + 0.01 * index, *(pose[:3, 3] + TOP_POSE_SHIFT)])
        arrays[f"top_pose_{mk.TOP}"] = np.broadcast_to(rpy_xyz, (len(TOP_INC), TOP_WIDTH, 6)).astype(np.float32)
        for ret in (1, 2):
            blocks[ret, mk.TOP][:, :3] += pose[:3, :3].T @ TOP_POSE_SHIFT
    k = 0 if index == 2 else len(OBJECTS)  # the last frame has no labels
    labels = {"boxes": np.array(boxes[:k]).reshape(-1, 7) + 0.123456789,
              "types": np.array([t for _, t in OBJECTS][:k], np.uint8),
              "ids": np.array([f"obj-{index}-{j}" for j in range(k)], dtype=str),
              "speed": np.array([[1.25 * j, -0.5] for j in range(k)]).reshape(-1, 2),
              "accel": np.array([[0.1, 0.2 * j] for j in range(k)]).reshape(-1, 2),
              "num_points": np.arange(k, dtype=np.int64) * 7, "difficulty": np.array([0, 2, 1][:k], np.uint8)}
    arrays.update({f"label_{key}": value for key, value in labels.items()})
    return arrays, {"blocks": blocks, "labels": labels, "pose": pose, "timestamp": int(arrays["timestamp"])}


def expected_points(truth: dict, returns=(1, 2), lasers=(mk.TOP, mk.FRONT)) -> np.ndarray:
    """Convert's order: return 1 then 2, lasers by name."""
    return np.concatenate([truth["blocks"][r, n] for r in returns for n in lasers])


def convert(*args, lines: list | None = None) -> list[str]:
    out = [] if lines is None else lines
    waymo_env.run_tool("convert", *args, on_line=out.append)
    return out


@pytest.fixture(scope="module")
def segment(waymo_python: Path, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The TFRecord of FRAMES frames written by `write`, and what each frame holds."""
    out = tmp_path_factory.mktemp("waymo_convert")
    built = [build_frame(i) for i in range(FRAMES)]
    mk.save_frames(out / "arrays", CONTEXT, [arrays for arrays, _ in built])
    waymo_env.run_tool("write", out / "segment.tfrecord", out / "arrays")
    return out / "segment.tfrecord", [truth for _, truth in built]


@pytest.fixture(scope="module")
def converted(segment, tmp_path_factory) -> tuple[Path, list[str]]:
    """`convert` with the defaults (all lidars, both returns) and the lines it printed."""
    out = tmp_path_factory.mktemp("converted") / "seg"
    return out, convert(segment[0], out)


def copy_of(converted, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted[0], tmp_path / "seg"))


def test_points_are_the_analytic_ones(segment, converted) -> None:
    """Known rays x range -> extrinsic -> vehicle frame, through a non-identity frame pose (default
    pixel poses: identity relative to it) and explicit pixel poses; no-label-zone points dropped."""
    folder, lines = converted
    assert lines == [f"frame {i}" for i in range(FRAMES)] + [f"done {FRAMES}"]
    for i, truth in enumerate(segment[1]):
        points = np.load(folder / f"{i:04d}.npy")
        want = expected_points(truth)
        assert points.dtype == np.float32 and points.shape == want.shape
        np.testing.assert_allclose(points[:, :3], want[:, :3], atol=1e-4, rtol=0)
        np.testing.assert_array_equal(points[:, 3:], want[:, 3:].astype(np.float32))  # raw intensity


def test_points_are_what_frame_utils_gives(segment, converted, tmp_path: Path) -> None:
    """waymo_open_dataset's frame_utils, called directly on the same TFRecord, gives the same points."""
    script = """
import sys, numpy as np, tensorflow as tf
from waymo_open_dataset import dataset_pb2
from waymo_open_dataset.utils import frame_utils
for i, record in enumerate(tf.data.TFRecordDataset(sys.argv[1])):
    frame = dataset_pb2.Frame.FromString(record.numpy())
    images, projections, _, top_pose = frame_utils.parse_range_image_and_camera_projection(frame)
    parts = []
    for ri_index in (0, 1):
        points, _ = frame_utils.convert_range_image_to_point_cloud(
            frame, images, projections, top_pose, ri_index=ri_index, keep_polar_features=True)
        for name, pts in zip(sorted(images), points):
            ri = np.array(images[name][ri_index].data, np.float32).reshape(images[name][ri_index].shape.dims)
            pts = pts[ri[..., 3][ri[..., 0] > 0] == -1]
            parts.append(pts[:, [3, 4, 5, 1, 2]])
    np.save(f"{sys.argv[2]}/{i}.npy", np.concatenate(parts).astype(np.float32))
"""
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([str(waymo_env.waymo_python()), "-c", script, str(segment[0]), str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for i in range(FRAMES):
        np.testing.assert_allclose(np.load(converted[0] / f"{i:04d}.npy"), np.load(tmp_path / f"{i}.npy"),
                                   atol=1e-6, rtol=0)


def test_labels_poses_and_speeds_round_trip(segment, converted) -> None:
    record, truths = segment
    index = json.loads((converted[0] / "segment.json").read_text())
    assert {k: index[k] for k in ("format", "format_version", "source", "source_bytes", "options", "context")} == {
        "format": "itkd-waymo-segment", "format_version": 1, "source": str(record.resolve()),
        "source_bytes": record.stat().st_size, "options": {"lidars": "all", "returns": 2}, "context": CONTEXT}
    assert [f["index"] for f in index["frames"]] == list(range(FRAMES))
    for i, (entry, truth) in enumerate(zip(index["frames"], truths)):
        assert entry["timestamp"] == truth["timestamp"] and entry["points_file"] == f"{i:04d}.npy"
        assert entry["num_points"] == len(expected_points(truth))
        assert entry["pose"] == truth["pose"].ravel().tolist()  # exact: doubles all the way
        labels, want = entry["labels"], truth["labels"]
        assert np.array(labels["boxes"]).reshape(-1, 7).tolist() == want["boxes"].tolist()
        assert np.array(labels["speed"]).reshape(-1, 2).tolist() == want["speed"].tolist()
        assert labels["types"] == want["types"].tolist() and labels["ids"] == want["ids"].tolist()
        assert labels["num_points"] == want["num_points"].tolist()
        assert labels["difficulty"] == want["difficulty"].tolist()  # raw: 0 stays 0
    assert index["frames"][2]["labels"]["boxes"] == []


def test_top_lidar_only(segment, converted, tmp_path: Path) -> None:
    assert convert(segment[0], tmp_path / "top", "--lidars", "top")[-1] == f"done {FRAMES}"
    index = json.loads((tmp_path / "top" / "segment.json").read_text())
    assert index["options"] == {"lidars": "top", "returns": 2}
    for i, truth in enumerate(segment[1]):
        want = expected_points(truth, lasers=(mk.TOP,))
        np.testing.assert_allclose(np.load(tmp_path / "top" / f"{i:04d}.npy"), want, atol=1e-4, rtol=0)
        assert index["frames"][i]["num_points"] == len(want)


def test_other_options_restart_and_give_first_returns(segment, converted, tmp_path: Path) -> None:
    """A folder converted with other options: its point files go (a stray one too), first returns only come."""
    folder = copy_of(converted, tmp_path)
    (folder / "0007.npy").write_bytes(b"stale")
    lines = convert(segment[0], folder, "--returns", "1")
    assert lines[-1] == f"done {FRAMES}" and not (folder / "0007.npy").exists()
    assert json.loads((folder / ".convert.json").read_text())["options"] == {"lidars": "all", "returns": 1}
    for i, truth in enumerate(segment[1]):
        want = expected_points(truth, returns=(1,))
        np.testing.assert_allclose(np.load(folder / f"{i:04d}.npy"), want, atol=1e-4, rtol=0)


def test_a_killed_conversion_resumes(segment, converted, tmp_path: Path) -> None:
    """.convert.json and two point files but no segment.json: those two are reused, the third converted."""
    folder = copy_of(converted, tmp_path)
    (folder / "segment.json").unlink()
    (folder / "0002.npy").unlink()
    (folder / "0002.npy.tmp").write_bytes(b"half a file")  # killed while writing
    kept = {n: (folder / n).stat().st_mtime_ns for n in ("0000.npy", "0001.npy")}
    assert convert(segment[0], folder)[-1] == f"done {FRAMES}"
    assert {n: (folder / n).stat().st_mtime_ns for n in kept} == kept
    np.testing.assert_array_equal(np.load(folder / "0002.npy"), np.load(converted[0] / "0002.npy"))
    assert json.loads((folder / "segment.json").read_text()) == json.loads((converted[0] / "segment.json").read_text())
    assert not (folder / "0002.npy.tmp").exists()


def test_a_converted_segment_is_skipped(segment, converted, tmp_path: Path) -> None:
    folder = copy_of(converted, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert convert(segment[0], folder) == ["skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def _fails(*args) -> str:
    """The one-line user error (exit code 2) of a convert run."""
    with pytest.raises(ItkdError) as info:
        waymo_env.run_tool("convert", *args)
    assert info.value.exit_code == 2 and "\n" not in info.value.message, info.value.message
    return info.value.message


def test_a_truncated_tfrecord_keeps_the_frames_before(segment, tmp_path: Path) -> None:
    data = segment[0].read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(data[: len(data) * 5 // 6])  # inside the last frame
    msg = _fails(cut, tmp_path / "seg")
    assert "cut.tfrecord: not a readable TFRecord of Waymo frames (record 2" in msg
    assert "the frames before it are kept, no segment.json written" in msg
    assert sorted(p.name for p in (tmp_path / "seg").glob("*.npy")) == ["0000.npy", "0001.npy"]
    assert not (tmp_path / "seg" / "segment.json").exists()


@pytest.mark.parametrize("exists, expect", [(False, "no such TFRecord file"),
                                            (True, "not a readable TFRecord of Waymo frames")])
def test_sources_that_are_no_segment(tmp_path: Path, segment, exists: bool, expect: str) -> None:
    src = tmp_path / "src.tfrecord"
    if exists:  # random bytes
        src.write_bytes(np.random.default_rng(0).bytes(5000))
    assert f"src.tfrecord: {expect}" in _fails(src, tmp_path / "seg")
    assert not (tmp_path / "seg" / "segment.json").exists()


def _tfrecord(records: list[bytes]) -> bytes:
    """TFRecord framing: length, masked CRC-32C of it, data, masked CRC-32C of the data."""
    def crc(data: bytes) -> bytes:
        c = 0xFFFFFFFF
        for byte in data:
            c ^= byte
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 & -(c & 1))
        c ^= 0xFFFFFFFF
        return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)

    return b"".join(struct.pack("<Q", len(r)) + crc(struct.pack("<Q", len(r))) + r + crc(r) for r in records)


def test_a_record_that_is_not_a_frame(segment, tmp_path: Path) -> None:
    src = tmp_path / "src.tfrecord"
    src.write_bytes(_tfrecord([b"\x00 not a Frame proto \xff"]))
    assert "src.tfrecord: record 0 is not a Waymo Frame" in _fails(src, tmp_path / "seg")
    assert not (tmp_path / "seg" / "segment.json").exists()


def test_an_unwritable_segment_folder(segment, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert _fails(segment[0], tmp_path / "file").endswith("file: exists and is not a folder")
    assert "cannot write (Not a directory)" in _fails(segment[0], tmp_path / "file" / "seg")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to simulate a full disk with")
def test_a_full_disk_keeps_the_frames_written(segment, converted, tmp_path: Path) -> None:
    """ENOSPC while writing frame 1 (its tmp file is /dev/full): one line, frame 0 kept, no segment.json."""
    folder = copy_of(converted, tmp_path)
    (folder / "segment.json").unlink()
    (folder / "0001.npy").unlink()
    os.symlink("/dev/full", folder / "0001.npy.tmp")
    msg = _fails(segment[0], folder)
    assert msg == (f"Waymo tool: {folder}/0001.npy: cannot write (No space left on device); the frames written so "
                   "far are kept: run the same command again to resume")
    assert (folder / "0000.npy").exists() and not (folder / "segment.json").exists()


@pytest.mark.parametrize("change, expect", [
    (lambda a: a.pop("ri1_2"), "f0.npz: array ri1_2 missing"),
    (lambda a: a.update(ri2_1=a["ri2_1"][:, :-1]), "f0.npz: array ri2_1 has shape (16, 359, 4), expected (16, 360, 4)"),
    (lambda a: a.update(inclinations_2=np.zeros(3)), "f0.npz: array inclinations_2 has shape (3,), expected (8,)"),
    (lambda a: a.update(label_speed=np.zeros((2, 2))), "f0.npz: array label_speed has shape (2, 2), expected (3, 2)"),
    (lambda a: a.update(pose=np.ones((4, 4))), "f0.npz: array pose is not a rigid transform"),
])
def test_write_names_the_bad_array(tmp_path: Path, segment, change, expect) -> None:
    arrays, _ = build_frame(0)
    change(arrays)
    mk.save_frames(tmp_path / "arrays", CONTEXT, [arrays])
    with pytest.raises(ItkdError, match=expect.replace("(", r"\(").replace(")", r"\)")) as info:
        waymo_env.run_tool("write", tmp_path / "out.tfrecord", tmp_path / "arrays")
    assert info.value.exit_code == 2 and not list(tmp_path.glob("out.tfrecord*"))
