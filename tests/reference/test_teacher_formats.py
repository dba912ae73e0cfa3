"""Every real teacher key list (OpenPCDet, det3d, SparseKD) loads into the matching recipe's model.

For each *.keys.txt in ../shared/reference/checkpoint-keys a state dict of random tensors with exactly
those keys and shapes is saved the way that framework saves it (OpenPCDet dict / det3d dict), and also
bare, DDP-prefixed, as safetensors and in the spconv 1.x layout. All must load with zero missing /
unexpected keys to the same tensors, and the models loaded from the 1.x and 2.3 files must agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from itkd_cli.models.checkpoint import load_into, load_teacher

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
KEYS_DIR = SHARED / "reference" / "checkpoint-keys"

# Small xy extents keep the dense BEV tiny; widths (and so every shape) stay those of the real model.
SMALL_GRID = {
    "centerpoint-voxel-nuscenes": ["model.grid.point_range=[-2.4,-2.4,-5.0,2.4,2.4,3.0]"],
    "centerpoint-voxel-waymo": ["model.grid.point_range=[-3.2,-3.2,-2.0,3.2,3.2,4.0]"],
    "centerpoint-pillar-waymo": ["model.grid.point_range=[-5.12,-5.12,-2.0,5.12,5.12,4.0]"],
}
RECIPES = {  # key list -> (recipe, overrides)
    "det3d_nusc_centerpoint_voxelnet_0075voxel_fix_bn_z": ("centerpoint-voxel-nuscenes", []),
    "det3d_waymo_centerpoint_voxelnet_3x": ("centerpoint-voxel-waymo", []),
    "openpcdet_cbgs_voxel0075_res3d_centerpoint": ("centerpoint-voxel-nuscenes", []),
    "openpcdet_cbgs_voxel01_res3d_centerpoint": ("centerpoint-voxel-nuscenes", []),
    "openpcdet_waymo_centerpoint": ("centerpoint-voxel-waymo", []),
    "openpcdet_waymo_centerpoint_pillar_1x": ("centerpoint-pillar-waymo", []),
    "openpcdet_waymo_centerpoint_without_resnet": (
        "centerpoint-voxel-waymo", ["model.backbone_3d.kind=plain", "model.backbone_3d.filters=[16,16,32,64,64]"]),
    "sparsekd_cp-voxel": ("centerpoint-voxel-waymo", []),
    "sparsekd_cp-voxel-s": ("sparsekd-cp-voxel-s", []),
    "sparsekd_cp-voxel-xs": ("sparsekd-cp-voxel-xs", []),
    "sparsekd_cp-voxel-xxs": ("sparsekd-cp-voxel-xxs", []),
}
KEY_FILES = sorted(p.stem.removesuffix(".keys") for p in KEYS_DIR.glob("*.keys.txt")) if KEYS_DIR.is_dir() else []


def _need_shared() -> None:
    if not KEYS_DIR.is_dir():
        pytest.skip(f"{KEYS_DIR} is absent (the reference key lists live beside the checkout)")


def parse_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """'name [a, b]' lines -> {name: shape}; '[]' is a scalar."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split(" ", 1)
        out[name] = tuple(int(x) for x in re.findall(r"\d+", shape))
    return out


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked") or name == "global_step":
            sd[name] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[name] = torch.randn(shape, generator=g) * 0.1
    return sd


def to_1x(sd: dict) -> dict:
    """spconv 2.3 [out,k,k,k,in] -> spconv 1.x [k,k,k,in,out] (how det3d release files store them)."""
    return {k: (v.permute(1, 2, 3, 4, 0).contiguous() if v.dim() == 5 else v) for k, v in sd.items()}


FAST = ("native", "native_1x", "safetensors")
ALL = FAST + ("bare", "ddp", "ddp_1x")


def save_variants(sd: dict, det3d: bool, folder: Path, names=ALL) -> dict[str, Path]:
    """The same weights in the file layouts ``names`` (native wrapper, bare, DDP, 1.x, safetensors)."""
    from safetensors.torch import save_file

    def wrap(state: dict) -> dict:
        if det3d:
            return {"meta": {"epoch": 20, "iter": 1000}, "state_dict": state, "optimizer": {}}
        return {"epoch": 30, "it": 1000, "model_state": state, "optimizer_state": None, "version": "pcdet+0.6.0"}

    makers = {
        "native": lambda: wrap(sd), "bare": lambda: dict(sd),
        "ddp": lambda: wrap({f"module.{k}": v for k, v in sd.items()}), "native_1x": lambda: wrap(to_1x(sd)),
        "ddp_1x": lambda: {f"module.{k}": v for k, v in to_1x(sd).items()},
    }
    files = {}
    for name in names:
        if name == "safetensors":
            files[name] = folder / "w.safetensors"
            save_file(sd, str(files[name]))
        else:
            files[name] = folder / f"{name}.pth"
            # OpenPCDet files in the wild are often legacy (non-zip) pickles.
            torch.save(makers[name](), files[name], _use_new_zipfile_serialization=det3d or name != "native")
    return files


def build(key_file: str):
    from itkd_cli.models.build import build_model
    from itkd_cli.recipe import load_recipe

    name, overrides = RECIPES[key_file]
    recipe = load_recipe(name, overrides + SMALL_GRID.get(name, SMALL_GRID["centerpoint-voxel-waymo"]))
    return recipe, build_model(recipe.model).eval()


def test_every_key_list_has_a_recipe() -> None:
    _need_shared()
    assert KEY_FILES and set(KEY_FILES) <= set(RECIPES), set(KEY_FILES) - set(RECIPES)


def _check_key_list(key_file: str, folder: Path, names) -> None:
    shapes = parse_keys(KEYS_DIR / f"{key_file}.keys.txt")
    sd = random_state(shapes)
    det3d = key_file.startswith("det3d")
    files = save_variants(sd, det3d, folder, names)
    _, model = build(key_file)
    results = {name: load_teacher(path, model) for name, path in files.items()}
    ref, report = results["native"]
    model.load_state_dict(ref, strict=True)  # the model built from the matching recipe takes it as is
    sparse = any(len(s) == 5 for s in shapes.values())
    for name, (loaded, rep) in results.items():
        assert not (rep.missing or rep.unexpected or rep.mismatched), (name, rep.warnings)
        assert rep.layout == (None if not sparse else "1.x" if name.endswith("_1x") else "2.3"), name
        assert all(torch.equal(loaded[k], ref[k]) for k in ref), name
    assert report.num_params == sum(p.numel() for p in model.parameters())
    header = (KEYS_DIR / f"{key_file}.keys.txt").read_text().splitlines()[0]
    assert f"{report.num_params}" in header  # parameter count printed in the key list
    if det3d:
        _check_det3d_mapping(key_file, sd, ref)
    else:  # OpenPCDet names: loaded verbatim
        assert all(torch.equal(ref[k], sd[k]) for k in sd)


@pytest.mark.parametrize("key_file", KEY_FILES)
def test_key_list_loads_native_1x_and_safetensors(key_file: str, tmp_path: Path) -> None:
    _need_shared()
    _check_key_list(key_file, tmp_path, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("key_file", KEY_FILES)
def test_key_list_loads_in_every_file_layout(key_file: str, tmp_path: Path) -> None:
    """Also bare OrderedDicts and DDP `module.` files (2.3 and 1.x)."""
    _need_shared()
    _check_key_list(key_file, tmp_path, ALL)


def _check_det3d_mapping(key_file: str, sd: dict, converted: dict) -> None:
    """Our rules give exactly the TSV's det3d -> OpenPCDet rows (deblock 1x1 transposed)."""
    kind = "nusc" if "nusc" in key_file else "waymo"
    rows = [line.split("\t") for line in (KEYS_DIR / f"det3d_to_openpcdet_{kind}.mapping.tsv").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(rows) == len(sd)
    for det3d_key, pcdet_key, _, pcdet_shape, note in rows:
        want = sd[det3d_key].transpose(0, 1) if note.startswith("transpose") else sd[det3d_key]
        assert torch.equal(converted[pcdet_key], want), det3d_key
        assert list(converted[pcdet_key].shape) == [int(x) for x in re.findall(r"\d+", pcdet_shape)]


def _voxels(recipe, n: int = 6, seed: int = 1):
    """A handful of voxels inside the grid: (voxels (V,P,F), num_points (V,), coords (V,4) [b,z,y,x])."""
    g = torch.Generator().manual_seed(seed)
    nx, ny, nz = recipe.model.grid.grid_size
    flat = torch.randperm(nx * ny * nz, generator=g)[:n]
    coords = torch.stack([torch.zeros(n, dtype=torch.long), flat // (nx * ny), (flat // nx) % ny, flat % nx], 1).int()
    lo = torch.tensor(recipe.model.grid.point_range[:3])
    size = torch.tensor(recipe.model.grid.voxel_size)
    xyz = (coords[:, [3, 2, 1]].float() + 0.5) * size + lo
    p = recipe.model.grid.max_points_per_voxel
    pts = torch.rand(n, p, recipe.model.num_point_features, generator=g)
    pts[..., :3] = xyz[:, None] + (pts[..., :3] - 0.5) * size
    return pts, torch.randint(1, p + 1, (n,), generator=g).int(), coords


FORWARD = {  # key list -> slow?  (one small model by default; the full-size ones with -m slow)
    "sparsekd_cp-voxel-xxs": False,
    "det3d_nusc_centerpoint_voxelnet_0075voxel_fix_bn_z": True,
    "openpcdet_waymo_centerpoint_pillar_1x": True,
    "openpcdet_waymo_centerpoint_without_resnet": True,
}


@pytest.mark.parametrize("key_file", [pytest.param(k, marks=[pytest.mark.slow] if slow else [])
                                      for k, slow in FORWARD.items()])
def test_forward_equal_between_1x_and_2_3_files(key_file: str, tmp_path: Path) -> None:
    """Models loaded (strict) from the 1.x and the 2.3 file give the same outputs on a few voxels."""
    _need_shared()
    sd = random_state(parse_keys(KEYS_DIR / f"{key_file}.keys.txt"))
    files = save_variants(sd, key_file.startswith("det3d"), tmp_path, ("native", "native_1x"))
    recipe, model_23 = build(key_file)
    _, model_1x = build(key_file)
    load_into(model_23, files["native"])
    load_into(model_1x, files["native_1x"])
    inputs = _voxels(recipe)
    with torch.no_grad():
        out_23, out_1x = model_23(*inputs, 1), model_1x(*inputs, 1)
    assert out_23.bev.abs().sum() > 0  # the voxels reached the BEV map
    assert torch.equal(out_23.bev, out_1x.bev)
    for a, b in zip(out_23.tasks, out_1x.tasks):
        for x, y in zip(a, b):
            assert (x is None and y is None) or torch.equal(x, y)
