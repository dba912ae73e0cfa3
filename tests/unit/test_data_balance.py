"""Class-balanced resampling (dataset.balanced_resampling, OpenPCDet's CBGS): counts, seeding, the
training dataset it changes, an exact resume over it, and `itkd data inspect --balanced`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from data_tiny import make_world, tiny_recipe
from typer.testing import CliRunner

from itkd_cli.cli.main import app
from itkd_cli.core.errors import ItkdError
from itkd_cli.data.balance import balanced_indices, class_counts, class_frames, resampling_report
from itkd_cli.data.cache import load_infos
from itkd_cli.data.dataset import FrameDataset
from itkd_cli.recipe.load import load_recipe

CLASSES = ["car", "pedestrian", "bicycle"]
# 6 car frames (one with three cars), 3 frames of two pedestrians, 1 bicycle frame (with an animal),
# 2 frames holding no class: 10 (frame, class) pairs.
HAND = ([{"gt_names": ["car", "car", "car"]}] + [{"gt_names": ["car"]}] * 5 + [{"gt_names": ["pedestrian"] * 2}] * 3
        + [{"gt_names": ["bicycle", "animal"]}] + [{"gt_names": ["animal"]}, {"gt_names": []}])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The embedded synthetic world, 'small' preset widened to 3 scenes of 6 keyframes (12 training frames)."""
    from itkd_cli.data.synth import generate

    root = tmp_path_factory.mktemp("balance") / "synth"
    generate(root, scenes=3, frames=6, preset="small", seed=0)
    return root


def _synth_recipe(root, *extra):
    return load_recipe("synth-pillar", [f"dataset.root={root}", "dataset.workers=0", *extra])


def test_counts_before_and_after_on_the_synthetic_world(synth):
    recipe = _synth_recipe(synth)
    names, seed = recipe.dataset.class_names, recipe.train.seed
    infos = load_infos(recipe.dataset, "synth_train")
    # by hand: a class's frames hold it at least once; its boxes are every gt_names entry equal to it
    before = {c: {"frames": sum(c in i["gt_names"] for i in infos),
                  "boxes": sum(n == c for i in infos for n in i["gt_names"])} for c in names}
    pairs = sum(v["frames"] for v in before.values())
    # OpenPCDet: int(len(cls_infos) * ratio), ratio = (1 / len(class_names)) / (len(cls_infos) / pairs)
    drawn = {c: int(v["frames"] * ((1.0 / len(names)) / (v["frames"] / pairs))) if v["frames"] else 0
             for c, v in before.items()}
    idx = balanced_indices(infos, names, seed)
    assert len(idx) == sum(drawn.values()) and all(0 <= i < len(infos) for i in idx)
    chosen = [infos[i] for i in idx]
    after = {c: {"frames": sum(c in i["gt_names"] for i in chosen),
                 "boxes": sum(n == c for i in chosen for n in i["gt_names"])} for c in names}
    # each class's own draws hold it; other classes' draws may hold it too
    assert all(after[c]["frames"] >= drawn[c] for c in names)
    report = resampling_report(infos, names, seed)
    assert report == {"seed": seed, "before": {"frames": len(infos), "classes": before},
                      "after": {"frames": len(idx), "classes": after}}


def test_the_training_dataset_is_resampled_only_when_asked(synth):
    on = _synth_recipe(synth, "dataset.balanced_resampling=true")
    infos = load_infos(on.dataset, "synth_train")
    idx = balanced_indices(infos, on.dataset.class_names, on.train.seed)
    ds = FrameDataset(on, "synth_train", train=True)
    assert len(ds) == len(idx) != len(infos)
    assert ds.tokens == [infos[i]["token"] for i in idx]
    assert len(FrameDataset(on, "synth_train", train=False)) == len(infos)  # evaluation never resamples
    assert len(FrameDataset(_synth_recipe(synth), "synth_train", train=True)) == len(infos)
    other = FrameDataset(_synth_recipe(synth, "dataset.balanced_resampling=true", "train.seed=5"), "synth_train", True)
    assert other.tokens != ds.tokens and len(other) == len(ds)


def test_hand_made_frames_have_known_multiplicities():
    assert class_frames(HAND, CLASSES) == {"car": [0, 1, 2, 3, 4, 5], "pedestrian": [6, 7, 8], "bicycle": [9]}
    for seed in range(5):  # every frame holds one class, so the per-class counts do not depend on the draw
        idx = balanced_indices(HAND, CLASSES, seed)
        hits = Counter(idx)
        # pairs = 10, frac = 1/3: int(6 * (1/3) / 0.6) = int(3 * (1/3) / 0.3) = int(1 * (1/3) / 0.1) = 3
        assert len(idx) == 9 and hits[9] == 3 and sum(hits[i] for i in range(6)) == 3
        assert sum(hits[i] for i in (6, 7, 8)) == 3 and not hits[10] and not hits[11]
        assert idx[6:] == [9, 9, 9]  # in class order: car draws, pedestrian draws, bicycle draws
        assert class_counts(HAND, CLASSES, idx) == {"frames": 9, "classes": {
            "car": {"frames": 3, "boxes": sum(3 if i == 0 else 1 for i in idx[:3])},
            "pedestrian": {"frames": 3, "boxes": 6}, "bicycle": {"frames": 3, "boxes": 3}}}
    # a class without frames still counts in frac (1/4): int(2.5) = 2 draws for each of the others
    idx = balanced_indices(HAND, [*CLASSES, "bus"], 0)
    assert len(idx) == 6 and Counter(idx)[9] == 2


def test_same_seed_same_list_other_seed_another():
    infos = [{"gt_names": ["car"] * (i % 3 + 1) + (["pedestrian"] if i % 4 == 0 else [])} for i in range(40)]
    first = balanced_indices(infos, ["car", "pedestrian"], 7)
    assert first == balanced_indices(infos, ["car", "pedestrian"], 7)
    assert first != balanced_indices(infos, ["car", "pedestrian"], 8)
    assert len(first) == len(balanced_indices(infos, ["car", "pedestrian"], 8))


def test_splits_it_cannot_balance_are_user_errors():
    with pytest.raises(ItkdError, match=r"^dataset.balanced_resampling: no frame of split 'x' has a box"):
        balanced_indices([{"gt_names": ["animal"]}], CLASSES, 0, "x")
    with pytest.raises(ItkdError, match=r"^dataset.balanced_resampling: split 'train' has 1 \(frame, class\) pairs"):
        balanced_indices([{"gt_names": ["car"]}], CLASSES, 0)  # int(1 * (1/3) / 1) = 0 frames


@pytest.mark.usefixtures("one_thread")
def test_resume_with_balanced_resampling_is_exact(tmp_path):
    from itkd_cli.data.loader import build_loader
    from itkd_cli.models.build import build_model
    from itkd_cli.train.loop import fit
    from itkd_cli.train.train import detector_step

    world = make_world(tmp_path / "world", frames=3)
    small = ["dataset.class_names=[car, pedestrian]", "model.head.tasks=[[car], [pedestrian]]",
             "dataset.balanced_resampling=true", "train.epochs=2", "train.batch_size=2", "train.log_every=1",
             "model.grid.point_range=[-15.36, -15.36, -5.0, 15.36, 15.36, 3.0]",
             "model.grid.voxel_size=[0.32, 0.32, 8.0]", "model.vfe.filters=[8]",
             "model.backbone_2d.layer_nums=[1, 1]", "model.backbone_2d.layer_strides=[2, 2]",
             "model.backbone_2d.num_filters=[8, 8]", "model.backbone_2d.upsample_strides=[1, 2]",
             "model.backbone_2d.num_upsample_filters=[8, 8]",
             "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8"]

    def run(out, *extra, resume=None):
        recipe = tiny_recipe(world, *small, *extra)
        torch.manual_seed(0)
        model = build_model(recipe.model)
        loader = build_loader(recipe, "tiny_train", train=True, batch_size=2, shuffle=True, seed=recipe.train.seed)
        assert len(loader.dataset) == 6  # 3 frames, both classes in each: int(3 * 0.5 / 0.5) draws per class
        fit(model, detector_step(model, recipe), loader, recipe.train, out, recipe.model_dump(mode="json"),
            "teacher", resume=resume, quiet=True)
        return model

    straight = run(tmp_path / "a")
    run(tmp_path / "b", "train.max_steps=4")  # stops mid-way through the second epoch (3 steps each)
    resumed = run(tmp_path / "b", resume=tmp_path / "b" / "last.pth")
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_inspect_balanced_json_shows_counts_before_and_after(synth):
    runner = CliRunner()
    args = ["data", "inspect", "--data-root", str(synth), "--split", "synth_train", "--balanced"]
    res = runner.invoke(app, [*args, "--seed", "3", "--classes", "car,pedestrian", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)["balanced"]
    infos = load_infos(_synth_recipe(synth).dataset, "synth_train")
    cars = sum("car" in i["gt_names"] for i in infos)
    peds = sum("pedestrian" in i["gt_names"] for i in infos)
    assert out["class_names"] == ["car", "pedestrian"] and out["seed"] == 3
    assert out["before"]["frames"] == len(infos) and out["before"]["classes"]["car"] == {
        "frames": cars, "boxes": sum(i["gt_names"].count("car") for i in infos)}
    pairs = cars + peds
    assert out["after"]["frames"] == int(cars * (0.5 / (cars / pairs))) + int(peds * (0.5 / (peds / pairs)))
    assert out == {"class_names": ["car", "pedestrian"],
                   **resampling_report(infos, ["car", "pedestrian"], 3)}
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert f"class-balanced resampling, seed 0: {len(infos)} ->" in table.output.replace("\n", " ")
    res = runner.invoke(app, ["data", "inspect", "--data-root", str(synth), "--seed", "3"])
    assert res.exit_code == 2 and "--seed / --classes: only used with --balanced" in res.output
    res = runner.invoke(app, [*args, "--classes", " , "])
    assert res.exit_code == 2 and "--classes: ' , ' names no class" in res.output
