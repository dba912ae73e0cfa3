"""The unlabeled pool (`dataset.unlabeled`, #41): each source on the tiny world, a small synthetic world and a tiny
converted Waymo root, counted against the tables by hand; the sweeps cache; every bad input as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_tiny import SENSOR, VERSION, ego_pose, make_world, matrix, tiny_recipe
from waymo_tiny import frame_points, make_root

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.cache import load_sweep_table
from itkd_cli.data.dataset import FrameDataset
from itkd_cli.data.sweep_pool import InfoChain
from itkd_cli.data.points import load_frame_points, read_pcd_bin
from itkd_cli.data.unlabeled import check_apart_from_val, check_point_range, load_pool, unlabeled_infos
from itkd_cli.recipe.load import load_recipe

EMPTY = {"gt_boxes": [], "gt_names": [], "num_lidar_pts": [], "ann_tokens": [], "labeled": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("unlabeled") / "world", frames=3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from itkd_cli.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "world"
    generate(root, preset="small", scenes=3, frames=2, seed=5, unlabeled_scenes=1)
    return root


def pool(world: Path, spec: str, *overrides: str):
    return tiny_recipe(world, f"dataset.unlabeled={spec}", *overrides)


def synth_recipe(root: Path, spec: str, *overrides: str):
    return load_recipe("synth-pillar", [f"dataset.root={root}", "dataset.workers=0", f"dataset.unlabeled={spec}",
                                        f"dataset.cache_dir={root / 'cache'}", *overrides])


def waymo_recipe(root: Path, spec: str):
    return load_recipe("synth-pillar-waymo", [f"dataset.root={root}", "dataset.workers=0",
                                              f"dataset.unlabeled={spec}"])


def table(root: Path, name: str, version: str = VERSION) -> list[dict]:
    return json.loads((root / version / f"{name}.json").read_text())


def hand_count_sweeps(root: Path, version: str, split: str) -> list[dict]:
    """The non-key sample_data rows of the split's scenes, straight from the JSON tables, in time order."""
    names = set(json.loads((root / version / "splits.json").read_text())[split])
    scenes = {s["token"] for s in table(root, "scene", version) if s["name"] in names}
    samples = {s["token"] for s in table(root, "sample", version) if s["scene_token"] in scenes}
    rows = [r for r in table(root, "sample_data", version) if not r["is_key_frame"] and r["sample_token"] in samples]
    return sorted(rows, key=lambda r: r["timestamp"])


# ----------------------------------------------------------------------------------------------- sweeps
def test_sweeps_pool_of_the_tiny_world(world):
    recipe = pool(world, "{source: sweeps}")
    infos = unlabeled_infos(recipe.dataset)
    hand = [r["token"] for r in hand_count_sweeps(world, VERSION, "tiny_train")]
    assert [i["token"] for i in infos] == hand == ["sd_sweep0", "sd_sweep1", "sd_sweep2"]
    keys = set(FrameDataset(recipe, "tiny_train", train=False).infos[0])
    for f, info in enumerate(infos):
        assert set(info) == keys | {"labeled"} and {k: info[k] for k in EMPTY} == EMPTY
        assert info["lidar_token"] == info["token"] and info["lidar_path"] == f"sweeps/LIDAR_TOP/f{f}_sweep.pcd.bin"
        np.testing.assert_allclose(info["lidar_to_global"], matrix(ego_pose(f - 0.1)) @ matrix(SENSOR), atol=1e-9)
    # its own previous sweeps (dataset.sweeps = 2): keyframe f - 1 is 0.45 s older; the first sweep has none
    assert infos[0]["sweeps"] == [] and [s["token"] for s in infos[1]["sweeps"]] == ["sd_key0"]
    assert infos[1]["sweeps"][0]["time_lag"] == pytest.approx(0.45)


def test_a_sweep_frame_is_seen_from_its_own_pose(world):
    """Sweep f holds keyframe f's global points; with its previous sweep (keyframe f - 1) in its own frame."""
    recipe = pool(world, "{source: sweeps}")
    sweeps = unlabeled_infos(recipe.dataset)
    keys = FrameDataset(recipe, "tiny_train", train=False).infos

    def to_global(points: np.ndarray, info: dict) -> np.ndarray:
        m = np.asarray(info["lidar_to_global"])
        return points[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]

    own = load_frame_points(world, sweeps[1], 1)
    np.testing.assert_allclose(to_global(own, sweeps[1]), to_global(load_frame_points(world, keys[1], 1), keys[1]),
                               atol=1e-3)
    both = FrameDataset(recipe, "tiny_train", train=False, infos=sweeps).points(1)
    older = both[len(own):]
    assert np.allclose(older[:, 4], 0.45) and np.all(both[:len(own), 4] == 0)
    np.testing.assert_allclose(to_global(older, sweeps[1]), to_global(load_frame_points(world, keys[0], 1), keys[0]),
                               atol=1e-3)


def test_sweeps_pool_of_a_synth_world_matches_the_tables(synth):
    from itkd_cli.data.synth import TRAIN_SPLIT, UNLABELED_SPLIT, VERSION as SYNTH

    from itkd_cli.data.synth.presets import get_preset
    from itkd_cli.data.synth.scene import sweep_times

    splits = json.loads((synth / SYNTH / "splits.json").read_text())
    per_scene = len(sweep_times(2, get_preset("small").sweeps_between)) - 2  # 2 keyframes a scene
    for split in (TRAIN_SPLIT, UNLABELED_SPLIT):
        spec = "{source: sweeps}" if split == TRAIN_SPLIT else f"{{source: sweeps, split: {split}}}"
        hand = hand_count_sweeps(synth, SYNTH, split)
        infos = unlabeled_infos(synth_recipe(synth, spec).dataset)
        assert len(hand) == per_scene * len(splits[split]) > 0
        assert [i["token"] for i in infos] == [r["token"] for r in hand]
        assert [i["lidar_path"] for i in infos] == [r["filename"] for r in hand]
        assert all(i["lidar_path"].startswith("sweeps/") and i["labeled"] is False for i in infos)


def test_sweeps_cache_is_keyed_like_the_splits(tmp_path):
    world = make_world(tmp_path / "w", frames=2)
    recipe = pool(world, "{source: sweeps}")
    first = list(unlabeled_infos(recipe.dataset))
    path = world / "cache" / f"{VERSION}_tiny_train_sweeps.npz"
    with np.load(path, allow_pickle=False) as data:  # numbers and bytes only: nothing to unpickle
        meta, arrays = json.loads(str(data["meta"])), {k: data[k] for k in data.files if k != "meta"}
    assert meta["pool"] == "sweeps" and list(load_sweep_table(recipe.dataset, "tiny_train")) == first
    arrays["tokens"][arrays["frames"][0]] = b"cached"
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    assert unlabeled_infos(recipe.dataset)[0]["token"] == "cached"  # read, not rebuilt
    make_world(world, frames=2, seed=1)  # a regenerated dataset: its tables change
    assert unlabeled_infos(recipe.dataset)[0]["token"] == "sd_sweep0"
    other = pool(world, "{source: sweeps}", "dataset.sweeps=1")  # other sweep settings: another key
    assert unlabeled_infos(other.dataset)[1]["sweeps"] == []
    path.write_bytes(path.read_bytes()[:100])  # truncated (a disk that filled up under another tool)
    with pytest.raises(ItkdError, match="unreadable sweeps cache") as err:
        unlabeled_infos(recipe.dataset)
    assert str(path) in err.value.message and "delete it" in err.value.hint


def test_sweeps_table_matches_the_devkit_geometry(synth):
    """Every pool frame of a synthetic world with 10 sweeps: its previous sweeps are its ``prev`` chain within
    dataset.max_sweep_lag, each brought into the frame's own LiDAR frame as the devkit's poses chain them."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    from itkd_cli.data.synth import VERSION as SYNTH

    recipe = synth_recipe(synth, "{source: sweeps}", "dataset.sweeps=10")
    nusc = NuScenes(version=SYNTH, dataroot=str(synth), verbose=False)

    def to_global(sd: dict) -> np.ndarray:
        cs, ego = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]), nusc.get("ego_pose", sd["ego_pose_token"])
        return (transform_matrix(ego["translation"], Quaternion(ego["rotation"]))
                @ transform_matrix(cs["translation"], Quaternion(cs["rotation"])))

    table = load_sweep_table(recipe.dataset, recipe.dataset.train_split)
    assert table.tokens == [info["token"] for info in table] and len(table) > 0
    longest = 0
    for info in table:
        sd = nusc.get("sample_data", info["token"])
        chain = []
        while len(chain) < 9 and sd["prev"]:
            sd = nusc.get("sample_data", sd["prev"])
            if (info["timestamp"] - sd["timestamp"]) * 1e-6 > recipe.dataset.max_sweep_lag:
                break
            chain.append(sd)
        assert [s["token"] for s in info["sweeps"]] == [s["token"] for s in chain]
        key_to_global = to_global(nusc.get("sample_data", info["token"]))
        np.testing.assert_allclose(info["lidar_to_global"], key_to_global, atol=1e-9)
        for sweep, sd in zip(info["sweeps"], chain):
            assert sweep["path"] == sd["filename"]
            assert sweep["time_lag"] == pytest.approx((info["timestamp"] - sd["timestamp"]) * 1e-6)
            np.testing.assert_allclose(sweep["to_key"], np.linalg.inv(key_to_global) @ to_global(sd), atol=1e-9)
        longest = max(longest, len(chain))
    assert longest >= 2  # a chain was walked past its first link


def test_info_chain_reads_two_sequences_as_one(world):
    recipe = pool(world, "{source: sweeps}")
    labeled, sweeps = FrameDataset(recipe, "tiny_train", train=False).infos, unlabeled_infos(recipe.dataset)
    chain = InfoChain(labeled, sweeps)
    assert len(chain) == len(labeled) + len(sweeps) == 6
    assert chain.tokens == [i["token"] for i in labeled] + sweeps.tokens == [chain[i]["token"] for i in range(6)]
    assert chain[-1] == sweeps[-1] and chain[0] == labeled[0]
    with pytest.raises(IndexError):
        chain[6]
    ds = FrameDataset(recipe, "tiny_train", train=False, infos=chain)
    assert ds.tokens == chain.tokens and ds[4].labeled is False and ds[0].labeled is True


# ------------------------------------------------------------------------------------------------ split
def test_split_pool_drops_annotations_and_keeps_every_frame(world):
    recipe = pool(world, "{source: split, split: tiny_val}", "dataset.sampled_interval.val=2")
    infos = unlabeled_infos(recipe.dataset)
    assert [i["token"] for i in infos] == ["s0", "s1", "s2"]  # a pool is not sub-sampled
    labeled = FrameDataset(recipe, "tiny_val", train=False).infos
    assert len(labeled) == 2 and labeled[0]["gt_names"]  # the split itself keeps its annotations and interval
    for info in infos:
        assert {k: info[k] for k in EMPTY} == EMPTY and info["lidar_path"].startswith("samples/")


def test_split_pool_of_the_synth_unlabeled_scenes(synth):
    from itkd_cli.data.synth import UNLABELED_SPLIT

    infos = unlabeled_infos(synth_recipe(synth, f"{{source: split, split: {UNLABELED_SPLIT}}}").dataset)
    assert len(infos) == 2 and all(i["lidar_path"].startswith("samples/") for i in infos)  # its 2 keyframes


def test_split_pool_of_a_converted_waymo_root(tmp_path):
    root = make_root(tmp_path / "w", {"train": {"seg-a": 2}, "unlabeled": {"seg-u": 3, "seg-v": 1}})
    infos = unlabeled_infos(waymo_recipe(root, "{source: split, split: unlabeled}").dataset)
    assert [i["token"] for i in infos] == ["seg-u_1000000", "seg-u_1100000", "seg-u_1200000", "seg-v_1000000"]
    assert all(i["kind"] == "waymo" and i["difficulty"] == [] and i["gt_boxes"] == [] for i in infos)


# ----------------------------------------------------------------------------------------------- folder
def test_folder_pool_of_pcd_bin_files(world, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for name, src in (("b.pcd.bin", "samples/LIDAR_TOP/f1_key.pcd.bin"),
                      ("a.pcd.bin", "sweeps/LIDAR_TOP/f0_sweep.pcd.bin")):
        (folder / name).write_bytes((world / src).read_bytes())
    (folder / "notes.txt").write_text("not a point file")
    recipe = pool(world, f"{{source: folder, folder: {folder}}}")
    infos = load_pool(recipe)
    assert [i["token"] for i in infos] == ["a.pcd.bin", "b.pcd.bin"]
    assert all(i["sweeps"] == [] and i["lidar_to_global"] == np.eye(4).tolist() and not i["labeled"] for i in infos)
    points = FrameDataset(recipe, "tiny_train", train=False, infos=infos).points(1)  # one sweep, as read
    np.testing.assert_array_equal(points[:, :4], read_pcd_bin(folder / "b.pcd.bin"))
    assert np.all(points[:, 4] == 0)


def test_folder_pool_of_converted_waymo_frames(tmp_path):
    root = make_root(tmp_path / "w")
    folder = tmp_path / "pool"
    folder.mkdir()
    raw = frame_points(np.random.default_rng(0))
    np.save(folder / "0001.npy", raw)
    recipe = waymo_recipe(root, f"{{source: folder, folder: {folder}}}")
    infos = load_pool(recipe)
    assert [i["token"] for i in infos] == ["0001.npy"] and infos[0]["kind"] == "waymo"
    points = FrameDataset(recipe, "train", train=False, infos=infos).points(0)
    np.testing.assert_allclose(points[:, 3], np.tanh(raw[:, 3]), rtol=1e-6)  # read like a converted frame


# ---------------------------------------------------------------------------------------------- errors
def _folder(tmp_path: Path, files: dict[str, bytes | None]) -> Path:
    folder = tmp_path / "pool"
    folder.mkdir()
    for name, data in files.items():
        if data is None:
            np.save(folder / name, np.zeros((4, 5), np.float32) + 1)
        else:
            (folder / name).write_bytes(data)
    return folder


POINTS = np.ones((10, 5), np.float32).tobytes()


@pytest.mark.parametrize("files, kind, expected", [
    ({"a.pcd.bin": POINTS, "b.npy": None}, "nuscenes", r"dataset.unlabeled.folder: .*pool mixes \.pcd\.bin "
                                                       r"\(a\.pcd\.bin\) and \.npy \(b\.npy\)"),
    ({"b.npy": None}, "nuscenes", r"dataset.unlabeled.folder: .*b\.npy: a \.npy file .* dataset.kind is nuscenes"),
    ({"a.pcd.bin": POINTS}, "waymo", r"dataset.unlabeled.folder: .*a\.pcd\.bin: a \.pcd\.bin file .* dataset.kind "
                                     "is waymo"),
    ({"a.pcd.bin": b""}, "nuscenes", r"dataset.unlabeled.folder: .*a\.pcd\.bin: is empty"),
    ({"a.pcd.bin": POINTS[:-4]}, "nuscenes", r"a\.pcd\.bin: holds 196 bytes, not a multiple of 20"),
    ({"notes.txt": b"x"}, "nuscenes", r"dataset.unlabeled: the pool holds no frame \(source folder, folder .*pool\)"),
])
def test_bad_folders(world, tmp_path, files, kind, expected):
    folder = _folder(tmp_path, files)
    spec = f"{{source: folder, folder: {folder}}}"
    recipe = pool(world, spec) if kind == "nuscenes" else waymo_recipe(make_root(tmp_path / "w"), spec)
    with pytest.raises(ItkdError, match=expected) as err:
        unlabeled_infos(recipe.dataset)
    assert "\n" not in err.value.message and err.value.exit_code == 2


def test_bad_splits_sources_and_missing_folders(world, tmp_path):
    cases = [
        (pool(world, "{source: split, split: nope}"), r"dataset.unlabeled.split: split 'nope': unknown for"),
        (pool(world, "{source: sweeps, split: nope}"), r"dataset.unlabeled.split: split 'nope': unknown for"),
        (pool(world, "{source: sweeps}", "dataset.train_split=gone", f"dataset.cache_dir={tmp_path / 'c'}"),
         r"dataset.train_split \(no dataset.unlabeled.split\): split 'gone': unknown"),
        (pool(world, f"{{source: folder, folder: {tmp_path / 'missing'}}}"),
         r"dataset.unlabeled.folder: .*missing: folder not found"),
        (waymo_recipe(make_root(tmp_path / "w"), "{source: sweeps}"),
         r"dataset.unlabeled.source: sweeps needs a nuScenes-format dataset \(dataset.kind is waymo"),
        (waymo_recipe(tmp_path / "w", "{source: split, split: nope}"),
         r"dataset.unlabeled.split: split 'nope': not in the converted Waymo root"),
    ]
    for recipe, expected in cases:
        with pytest.raises(ItkdError, match=expected) as err:
            unlabeled_infos(recipe.dataset)
        assert "\n" not in err.value.message


def test_scenes_without_sweeps_give_an_empty_pool(tmp_path):
    world = make_world(tmp_path / "w", frames=2)
    rows = [r for r in table(world, "sample_data") if r["is_key_frame"]]
    for a, b in zip(rows, rows[1:]):
        a["next"], b["prev"] = b["token"], a["token"]
    rows[0]["prev"], rows[-1]["next"] = "", ""
    (world / VERSION / "sample_data.json").write_text(json.dumps(rows))
    with pytest.raises(ItkdError, match=r"dataset.unlabeled: the pool holds no frame \(source sweeps, split "
                                        r"tiny_train\)"):
        unlabeled_infos(pool(world, "{source: sweeps}").dataset)


def test_points_outside_the_grid_are_refused(world, tmp_path):
    """A pool in another frame (here 500 m away: a global frame, say) is caught on a few of its frames."""
    folder = tmp_path / "pool"
    folder.mkdir()
    points = np.fromfile(world / "samples/LIDAR_TOP/f0_key.pcd.bin", np.float32).reshape(-1, 5)
    for i in range(4):
        far = points.copy()
        far[:, 0] += 500.0
        far.tofile(folder / f"{i}.pcd.bin")
    recipe = pool(world, f"{{source: folder, folder: {folder}}}")
    infos = unlabeled_infos(recipe.dataset)
    with pytest.raises(ItkdError, match=r"dataset.unlabeled: .*pool/0\.pcd\.bin: only 0\.0% of its points lie inside "
                                        r"model.grid.point_range \[-40.96, -40.96, -5.0, 40.96, 40.96, 3.0\]") as err:
        load_pool(recipe)
    assert "\n" not in err.value.message and "source folder" in err.value.message
    check_point_range(recipe, infos[:0])  # nothing to check
    for i in range(4):
        points.tofile(folder / f"{i}.pcd.bin")
    check_point_range(recipe, infos)  # the recipe's own frame passes


def test_one_frame_outside_the_grid_in_a_good_pool_is_refused(world, tmp_path):
    """Each frame read is judged on its own: one far file among seven good ones (7/8 of the points inside in
    aggregate) is named, with how many of the frames read failed."""
    folder = tmp_path / "pool"
    folder.mkdir()
    points = np.fromfile(world / "samples/LIDAR_TOP/f0_key.pcd.bin", np.float32).reshape(-1, 5)
    for i in range(8):
        (points + np.float32([500.0, 0, 0, 0, 0]) if i == 5 else points).tofile(folder / f"{i}.pcd.bin")
    recipe = pool(world, f"{{source: folder, folder: {folder}}}")
    with pytest.raises(ItkdError, match=r"pool/5\.pcd\.bin: only 0\.0% of its points .*\(1 of the 8 pool frames "
                                        r"read are under 10%, source folder") as err:
        load_pool(recipe)
    assert "\n" not in err.value.message and err.value.exit_code == 2
    check_point_range(recipe, unlabeled_infos(recipe.dataset)[:5])  # the good frames alone pass


def test_a_pool_holding_what_compress_scores_is_refused(world, synth, tmp_path):
    """The tiny world's tiny_train and tiny_val share their one scene: every way of taking the pool from it is
    caught, by the scenes of its split or, for a folder, by a point file that a val frame reads."""
    shared = r"shares 1 of its 1 scenes with dataset.val_split 'tiny_val' \(first: scene-tiny\), which `itkd " \
             r"compress` scores the student on; distilled on "
    cases = [
        (pool(world, "{source: split, split: tiny_val}"), r"dataset.unlabeled.split: 'tiny_val' " + shared + "their"),
        (pool(world, "{source: split, split: tiny_train}"), r"dataset.unlabeled.split: 'tiny_train' " + shared),
        (pool(world, "{source: sweeps}", "dataset.sweeps=1"),
         r"dataset.train_split \(no dataset.unlabeled.split\): 'tiny_train' " + shared + "the sweeps of those"),
        (pool(world, f"{{source: folder, folder: {world / 'samples' / 'LIDAR_TOP'}}}"),
         r"dataset.unlabeled: 3 of the pool's 3 frames are point files of dataset.val_split 'tiny_val' \(first: "
         r".*f0_key.pcd.bin\), .*\(source folder"),
        (pool(world, f"{{source: folder, folder: {world / 'sweeps' / 'LIDAR_TOP'}}}"),  # val frames stack 2 sweeps
         r"dataset.unlabeled: 3 of the pool's 3 frames .*sweeps/LIDAR_TOP/f0_sweep.pcd.bin"),
    ]
    for recipe, expected in cases:
        with pytest.raises(ItkdError, match=expected) as err:
            check_apart_from_val(recipe.dataset, unlabeled_infos(recipe.dataset))
        assert "\n" not in err.value.message and err.value.exit_code == 2 and "not evaluated" in err.value.hint
    folder = tmp_path / "copies"  # the same points under other names: not detected (documented)
    folder.mkdir()
    for src in sorted((world / "samples" / "LIDAR_TOP").glob("*.pcd.bin")):
        (folder / src.name).write_bytes(src.read_bytes())
    copies = pool(world, f"{{source: folder, folder: {folder}}}")
    check_apart_from_val(copies.dataset, load_pool(copies))
    from itkd_cli.data.synth import UNLABELED_SPLIT

    for spec in (f"{{source: split, split: {UNLABELED_SPLIT}}}", "{source: sweeps}"):
        apart = synth_recipe(synth, spec)  # the synthetic world's train, unlabeled and val scenes are apart
        check_apart_from_val(apart.dataset, unlabeled_infos(apart.dataset))


def test_a_waymo_pool_sharing_segments_with_val_is_refused(tmp_path):
    root = make_root(tmp_path / "w", {"train": {"seg-a": 2}, "val": {"seg-b": 1}, "unlabeled": {"seg-u": 1}})
    manifest = json.loads((root / "itkd_waymo.json").read_text())
    manifest["splits"]["unlabeled"] = ["seg-b", "seg-u"]  # one val segment listed in the pool's split too
    (root / "itkd_waymo.json").write_text(json.dumps(manifest))
    recipe = waymo_recipe(root, "{source: split, split: unlabeled}")
    with pytest.raises(ItkdError, match=r"dataset.unlabeled.split: 'unlabeled' shares 1 of its 2 segments with "
                                        r"dataset.val_split 'val' \(first: seg-b\)"):
        check_apart_from_val(recipe.dataset, unlabeled_infos(recipe.dataset))
