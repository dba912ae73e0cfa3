"""Reading checkpoints safely (formats, DDP, malicious pickles, bad files), our format, the CLI."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.checkpoint import load_into, load_teacher, read_checkpoint, read_ours, save_checkpoint

# A tiny voxel CenterPoint (every width from the recipe): conv_input 5 -> 4 decides the spconv layout.
TINY = ["model.grid.point_range=[-3.2,-3.2,-5.0,3.2,3.2,3.0]", "model.grid.voxel_size=[0.2,0.2,0.2]",
        "model.backbone_3d.filters=[4,4,8,8,8]", "model.backbone_3d.out_channels=8",
        "model.backbone_2d.layer_nums=[1,1]", "model.backbone_2d.num_filters=[8,16]",
        "model.backbone_2d.num_upsample_filters=[8,8]", "model.head.shared_conv_channels=8",
        "model.head.head_conv_channels=8"]
DET3D_HEADS = {"center": "reg", "center_z": "height", "dim": "dim", "rot": "rot", "vel": "vel", "hm": "hm"}


@pytest.fixture(scope="module")
def tiny():
    """(recipe, model, its state dict with random values)."""
    from itkd_cli.models.build import build_model
    from itkd_cli.recipe import load_recipe

    recipe = load_recipe("centerpoint-voxel-nuscenes", TINY)
    model = build_model(recipe.model)
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
          for k, v in model.state_dict().items()}
    return recipe, model, sd


def to_det3d(sd: dict) -> dict:
    """Test-side inverse map (OpenPCDet -> det3d names, stride-1 deblocks back to Conv2d)."""
    import re

    out = {}
    for k, v in sd.items():
        if k == "global_step":
            continue
        if m := re.match(r"backbone_3d\.conv([234])\.0\.([01])\.(\w+)$", k):
            k = f"backbone.conv{m[1]}.{m[2]}.{m[3]}"
        elif m := re.match(r"backbone_3d\.conv([234])\.([12])\.(.+)$", k):
            k = f"backbone.conv{m[1]}.{int(m[2]) + 2}.{m[3]}"
        elif m := re.match(r"dense_head\.heads_list\.(\d+)\.(\w+)\.(\d+)(?:\.(\d+))?\.(\w+)$", k):
            idx = 3 * int(m[3]) + int(m[4] or 0)
            k = f"bbox_head.tasks.{m[1]}.{DET3D_HEADS[m[2]]}.{idx}.{m[5]}"
        elif k.startswith("backbone_2d.deblocks.") and k.endswith(".0.weight") and v.shape[2:] == (1, 1):
            k, v = "neck" + k[len("backbone_2d"):], v.transpose(0, 1)
        k = k.replace("backbone_3d.conv_out.", "backbone.extra_conv.").replace("backbone_3d.", "backbone.")
        k = k.replace("backbone_2d.", "neck.").replace("dense_head.", "bbox_head.")
        out[k] = v.contiguous()
    return out


def to_1x(sd: dict) -> dict:
    return {k: (v.permute(1, 2, 3, 4, 0).contiguous() if v.dim() == 5 else v) for k, v in sd.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", ["openpcdet", "det3d", "det3d-1x", "bare", "ddp", "safetensors", "numpy-epoch"])
def test_every_wrapper_loads_to_identical_tensors(tiny, tmp_path: Path, variant: str) -> None:
    from safetensors.torch import save_file

    recipe, model, sd = tiny
    path = tmp_path / "ckpt.pth"
    if variant == "openpcdet":
        torch.save({"epoch": 7, "it": 70, "model_state": sd, "optimizer_state": None, "version": "pcdet+0.6.0"}, path)
    elif variant == "numpy-epoch":  # numpy scalars are plain data, allowed by name
        torch.save({"epoch": np.int64(7), "it": 70, "model_state": sd, "version": "pcdet+0.5.2"}, path)
    elif variant.startswith("det3d"):
        d3 = to_det3d(sd)
        torch.save({"meta": {"epoch": 20, "iter": 99}, "state_dict": to_1x(d3) if variant.endswith("1x") else d3,
                    "optimizer": {}}, path, _use_new_zipfile_serialization=False)
    elif variant == "bare":
        torch.save(OrderedDict(sd), path)
    elif variant == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in to_1x(sd).items()}}, path)
    else:
        path = tmp_path / "ckpt.safetensors"
        save_file(sd, str(path))
    loaded, report = load_teacher(path, recipe)
    assert same(loaded, sd)
    assert not (report.missing or report.unexpected or report.mismatched or report.warnings)
    assert report.layout == ("1.x" if variant in ("det3d-1x", "ddp") else "2.3")
    assert report.num_params == sum(p.numel() for p in model.parameters())
    if variant.startswith("det3d"):
        assert report.naming == "det3d" and report.progress["epoch"] == 20 and report.added == ["global_step"]
        assert report.transposed == ["backbone_2d.deblocks.0.0.weight"]
    if variant in ("openpcdet", "numpy-epoch"):
        assert report.progress["epoch"] == 7 and report.format == "openpcdet"


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"model_state": {"dense_head.x": torch.zeros(1)}, "epoch": Evil()}, path)
    with pytest.raises(ItkdError, match="refused.*could execute code") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value) and "weights_only=False" in err.value.hint
    assert not marker.exists()


@pytest.mark.parametrize("kind, match", [
    ("missing", "no such checkpoint file"), ("text", "not a PyTorch checkpoint"), ("empty", "not a PyTorch checkpoint"),
    ("random-bytes", "not a PyTorch checkpoint"),
    ("resnet", "not a CenterPoint checkpoint"), ("list", "not a checkpoint"),
    ("other-dict", "not a checkpoint we know"),
    ("bad-safetensors", "not a readable safetensors"), ("folder", "is a folder")])
def test_bad_inputs_are_one_line_errors(tmp_path: Path, kind: str, match: str) -> None:
    path = tmp_path / ("x.safetensors" if kind == "bad-safetensors" else "x.pth")
    if kind in ("text", "bad-safetensors"):
        path.write_text("hello, not a checkpoint\n")
    elif kind == "random-bytes":
        path.write_bytes(bytes(range(250, 256)) * 200)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "resnet":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.bn1.weight": torch.zeros(64),
                    "fc.weight": torch.zeros(1000, 2048)}, path)
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    elif kind == "other-dict":
        torch.save({"weights": 1, "cfg": "x"}, path)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(ItkdError, match=match) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "weights_only" not in str(err.value)  # never torch's advice to unpickle an unknown file


def test_mismatch_strict_and_non_strict(tiny, tmp_path: Path) -> None:
    recipe, model, sd = tiny
    bad = dict(sd)
    bad["dense_head.shared_conv.0.weight"] = torch.zeros(9, 16, 3, 3)
    bad["extra.weight"] = torch.zeros(1)
    del bad["dense_head.heads_list.0.hm.1.bias"]
    path = tmp_path / "bad.pth"
    torch.save({"model_state": bad}, path)
    with pytest.raises(ItkdError) as err:
        load_teacher(path, recipe)
    text = str(err.value)
    assert "dense_head.shared_conv.0.weight checkpoint [9, 16, 3, 3] vs model [8, 16, 3, 3]" in text
    assert "extra.weight" in text and "dense_head.heads_list.0.hm.1.bias" in text
    loaded, report = load_teacher(path, recipe, strict=False)
    assert len(report.warnings) == 3 and "extra.weight" not in loaded
    assert "dense_head.shared_conv.0.weight" not in loaded  # reported, not loaded
    load_into(model, path, strict=False)


def test_our_format_round_trip(tiny, tmp_path: Path) -> None:
    from itkd_cli.models.build import build_model

    recipe, model, sd = tiny
    model.load_state_dict(sd)
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "ours.pth", model, recipe, "teacher", epoch=3, step=30,
                           optimizer=opt.state_dict(), rng={"torch": torch.get_rng_state()}, metrics={"mAP": 0.5})
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "itkd" and obj["epoch"] == 3 and obj["step"] == 30 and "spconv" in obj["versions"]
    raw, rec = read_ours(path)
    assert rec == recipe and raw.format == "itkd"
    fresh = build_model(rec.model)
    report = load_into(fresh, path)  # no recipe needed: it is stored
    assert same(fresh.state_dict(), sd) and report.layout_source in ("detected", "format")
    assert not list(tmp_path.glob(".*tmp"))  # atomic: no temporary left behind
    with pytest.raises(ItkdError, match="stores no recipe"):
        torch.save({"model_state": sd}, tmp_path / "pcdet.pth")
        read_ours(tmp_path / "pcdet.pth")


def test_cli_inspect_and_convert(tiny, tmp_path: Path, cli) -> None:
    recipe, model, sd = tiny
    src = tmp_path / "det3d.pth"
    torch.save({"meta": {"epoch": 20}, "state_dict": to_1x(to_det3d(sd))}, src)
    res = cli("checkpoint", "inspect", src, "--json")
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["format"] == "det3d" and facts["spconv_layout"] == "1.x"
    arch = facts["architecture"]
    assert arch["encoder"] == "voxel" and arch["backbone_3d_filters"] == [4, 4, 8, 8, 8]
    assert arch["classes_per_task"] == [1, 2, 2, 1, 2, 2] and arch["with_velocity"] is True
    assert arch["bev_width"] == recipe.model.bev_in_channels and arch["shared_conv"] == 8
    sets = [a for s in TINY for a in ("--set", s)]
    res = cli("checkpoint", "inspect", src, "--recipe", "centerpoint-voxel-nuscenes", *sets, "--json")
    assert json.loads(res.stdout)["mapping"]["ok"] is True
    res = cli("checkpoint", "inspect", src, "--recipe", "centerpoint-voxel-nuscenes", "--json")
    assert json.loads(res.stdout)["mapping"]["mismatched"]  # full-width recipe does not fit
    for extra, name in (([], "out.pth"), (["--safetensors"], "out.safetensors")):
        out = tmp_path / name
        res = cli("checkpoint", "convert", src, "--recipe", "centerpoint-voxel-nuscenes", *sets, "--out", out, *extra)
        assert res.exit_code == 0, res.output
        raw, rec = read_ours(out)
        assert rec.model == recipe.model
        loaded, _ = load_teacher(out)
        assert same(loaded, sd | {"global_step": loaded["global_step"]})
    res = cli("checkpoint", "convert", src, "--recipe", "centerpoint-voxel-nuscenes", "--out", tmp_path / "no.pth")
    assert res.exit_code == 2 and not (tmp_path / "no.pth").exists()
    res = cli("checkpoint", "inspect", tmp_path / "missing.pth")
    assert res.exit_code == 2
