"""Model complexity: parameters, MACs and CPU latency per stage, measured on one real-looking frame.

Dense layers are counted from the real forward (hooks read the real output shapes); sparse convs
from the index pairs spconv actually built for the frame (sum over kernel offsets of the pairs,
times C_in x C_out), so empty space costs nothing, as on the device.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import NamedTuple

import torch
from spconv.pytorch.conv import SparseConvolution
from spconv.pytorch.utils import PointToVoxel
from torch import Tensor, nn

from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.recipe.schema import ModelConfig

STAGES = ("vfe", "backbone_3d", "map_to_bev_module", "backbone_2d", "dense_head")


class Frame(NamedTuple):
    """One voxelised frame (batch size 1): voxels (V, P, F), num_points (V,), coords (V, 4) [b, z, y, x]."""

    voxels: Tensor
    num_points: Tensor
    coords: Tensor
    n_points: int


def lidar_like_points(model_cfg: ModelConfig, n_points: int, seed: int = 0) -> Tensor:
    """A LiDAR-looking cloud (N, F): 32 rings on a ground plane plus returns from walls/objects.

    Beams below the horizon hit a ground plane 1.8 m under the sensor; the others hit a surface at a
    random range. Points outside ``point_range`` are dropped, so N may end up a little smaller.
    """
    g = torch.Generator().manual_seed(seed)
    elev = torch.deg2rad(torch.linspace(-30.67, 10.67, 32))[torch.randint(0, 32, (n_points,), generator=g)]
    azim = torch.rand(n_points, generator=g) * 2 * math.pi
    wall = 5.0 + 65.0 * torch.rand(n_points, generator=g) ** 2  # more near returns, like a real sensor
    ground = 1.8 / torch.tan(-elev).clamp(min=1e-3)
    rng = torch.where(elev < -0.02, torch.minimum(ground, wall), wall)
    xy = rng * torch.cos(elev)
    pts = torch.stack([xy * torch.cos(azim), xy * torch.sin(azim), rng * torch.sin(elev)], 1)
    feats = torch.zeros(n_points, model_cfg.num_point_features)
    feats[:, :3] = pts
    feats[:, 3] = torch.rand(n_points, generator=g)  # intensity; time lag and the rest stay 0
    lo = torch.tensor(model_cfg.grid.point_range[:3])
    hi = torch.tensor(model_cfg.grid.point_range[3:])
    keep = ((pts >= lo) & (pts < hi)).all(dim=1)
    return feats[keep]


def build_frame(model_cfg: ModelConfig, n_points: int = 120_000, seed: int = 0) -> Frame:
    """Voxelise a LiDAR-like cloud with spconv's PointToVoxel using the recipe's grid (eval limits)."""
    grid = model_cfg.grid
    points = lidar_like_points(model_cfg, n_points, seed)
    gen = PointToVoxel(vsize_xyz=list(grid.voxel_size), coors_range_xyz=list(grid.point_range),
                       num_point_features=model_cfg.num_point_features, max_num_voxels=grid.max_voxels_eval,
                       max_num_points_per_voxel=grid.max_points_per_voxel)
    voxels, zyx, num = gen(points)
    coords = torch.cat([torch.zeros(len(zyx), 1, dtype=zyx.dtype), zyx], dim=1).int()
    return Frame(voxels, num.int(), coords, len(points))


def _stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def _dense_macs(module: nn.Module, inp: Tensor, out: Tensor) -> int:
    """Multiply-accumulates of one dense layer from its real input/output shapes."""
    if isinstance(module, nn.ConvTranspose2d):
        # Every input element is scattered through the whole kernel into C_out maps.
        k = module.kernel_size[0] * module.kernel_size[1]
        return inp.numel() * module.out_channels * k // module.groups
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out.numel() * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return out.numel()  # one multiply-add per element (scale and shift)
    return 0


def _sparse_macs(module: SparseConvolution, out) -> int:
    """Input-output pairs spconv built for this layer (all kernel offsets) x C_in x C_out.

    spconv's native submanifold rulebook stores only half of the non-centre offsets (offset k and
    its mirror are the same pairs swapped) and handles the centre as a plain matmul over all N
    sites, so its pairs are N + 2 x sum(indice_pair_num). Regular convs store every offset.
    """
    data = out.indice_dict[module.indice_key]
    if not hasattr(data, "indice_pair_num"):
        raise ValueError(f"sparse MACs are counted from the native (CPU) rulebook, got {type(data).__name__}")
    stored = int(data.indice_pair_num.sum())
    pairs = out.features.shape[0] + 2 * stored if module.subm else stored
    return pairs * (module.in_channels // module.groups) * module.out_channels


def count_params(model: CenterPoint) -> dict[str, int]:
    """Parameters per stage (stages without parameters report 0)."""
    out = {s: 0 for s in STAGES}
    for name, p in model.named_parameters():
        out[_stage_of(name)] += p.numel()
    return out


@torch.no_grad()
def count_macs(model: CenterPoint, frame: Frame) -> dict[str, int]:
    """MACs per stage of one forward of ``frame`` (batch size 1, eval mode)."""
    macs = {s: 0 for s in STAGES}
    handles = []
    for name, module in model.named_modules():
        stage = _stage_of(name)
        if isinstance(module, SparseConvolution):
            if module.indice_key is None:
                raise ValueError(f"{name}: sparse conv without indice_key cannot be counted")
            hook = lambda m, i, o, s=stage: macs.__setitem__(s, macs[s] + _sparse_macs(m, o))  # noqa: E731
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            hook = lambda m, i, o, s=stage: macs.__setitem__(s, macs[s] + _dense_macs(m, i[0], o))  # noqa: E731
        else:
            continue
        handles.append(module.register_forward_hook(hook))
    try:
        model.eval()(frame.voxels, frame.num_points, frame.coords, 1)
    finally:
        for h in handles:
            h.remove()
    return macs


@torch.no_grad()
def cpu_latency_ms(model: CenterPoint, frame: Frame, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (ms) of ``repeats`` CPU forwards after ``warmup`` forwards."""
    model = model.eval()
    for _ in range(warmup):
        model(frame.voxels, frame.num_points, frame.coords, 1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(frame.voxels, frame.num_points, frame.coords, 1)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def profile(model: CenterPoint, frame: Frame, repeats: int = 5, warmup: int = 1) -> dict:
    """Params, MACs (per stage and total) and CPU latency of ``model`` on ``frame`` (repeats 0: no timing)."""
    params = count_params(model)
    macs = count_macs(model, frame)
    return {
        "params": params, "params_total": sum(params.values()),
        "macs": macs, "macs_total": sum(macs.values()),
        "latency_ms": cpu_latency_ms(model, frame, repeats, warmup) if repeats > 0 else None,
        "frame": {"points": frame.n_points, "voxels": int(frame.voxels.shape[0])},
    }
