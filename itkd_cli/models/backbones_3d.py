"""Sparse 3D backbones (OpenPCDet ``backbones_3d``): VoxelResBackBone8x and VoxelBackBone8x (spconv 2.3)."""

from __future__ import annotations

from functools import partial

import spconv.pytorch as spconv
import torch
from spconv.pytorch import ConvAlgo
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError

_norm = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)


def sparse_algo(device: torch.device) -> ConvAlgo:
    """spconv algorithm for a device: Native on CPU (the only one built), MaskImplicitGemm on CUDA."""
    return ConvAlgo.MaskImplicitGemm if device.type == "cuda" else ConvAlgo.Native


def set_sparse_algo(module: nn.Module, device: torch.device) -> None:
    """Point every sparse conv inside ``module`` at the algorithm of ``device`` (weights are KRSC either way)."""
    algo = sparse_algo(device)
    for m in module.modules():
        if isinstance(m, SparseConvolution):
            m.algo = algo


class BiasSubMConv3d(spconv.SubMConv3d):
    """SubMConv3d whose bias also works in CPU inference.

    spconv 2.3 fuses the bias into the CPU gather-GEMM in eval mode, which its CPU kernels reject
    ("bias and act don't support cpu"); the training path adds the bias afterwards, so on CPU we
    always take it (for the Native algorithm that flag changes nothing else). Keys are unchanged.
    """

    def forward(self, input: spconv.SparseConvTensor) -> spconv.SparseConvTensor:  # noqa: A002 (spconv name)
        """Sparse (N, C_in) -> (N, C_out) at the same sites."""
        training = self.training or (self.bias is not None and input.features.device.type == "cpu")
        return self._conv_forward(training, input, self.weight, self.bias, name=self.name,
                                  sparse_unique_name=self._sparse_unique_name, act_type=self.act_type,
                                  act_alpha=self.act_alpha, act_beta=self.act_beta)


def post_act_block(c_in: int, c_out: int, key: str, stride: int = 1, padding=1, subm: bool = True) -> spconv.SparseSequential:
    """Sparse conv (no bias) + BN + ReLU; SubMConv3d if ``subm`` else a strided SparseConv3d."""
    algo = ConvAlgo.Native  # CPU default at build; forward re-targets per device
    if subm:
        conv = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=key, algo=algo)
    else:
        conv = spconv.SparseConv3d(c_in, c_out, 3, stride=stride, padding=padding, bias=False,
                                   indice_key=key, algo=algo)
    return spconv.SparseSequential(conv, _norm(c_out), nn.ReLU())


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two 3x3x3 submanifold convs WITH bias (as OpenPCDet), BN after each."""

    def __init__(self, channels: int, key: str) -> None:
        super().__init__()
        algo = ConvAlgo.Native
        self.conv1 = BiasSubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key=key, algo=algo)
        self.bn1 = _norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = BiasSubMConv3d(channels, channels, 3, padding=1, bias=True, indice_key=key, algo=algo)
        self.bn2 = _norm(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        """Sparse tensor (N, C) features -> same sites, (N, C)."""
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        out = out.replace_feature(self.relu(self.bn2(out.features) + x.features))
        return out


class VoxelBackBone8x(nn.Module):
    """Sparse 3D encoder with 8x down-sampling; ``residual`` selects VoxelResBackBone8x blocks.

    Shapes: input sparse shape (nz + 1, ny, nx) -> conv_out output (nz', ny / 8, nx / 8),
    nz' = ModelConfig.bev_z_cells.
    """

    def __init__(self, in_channels: int, grid_size: tuple[int, int, int], filters: tuple[int, ...],
                 out_channels: int, residual: bool) -> None:
        super().__init__()
        nx, ny, nz = grid_size
        # OpenPCDet pads z by one cell so that the strides line up with its configs.
        self.sparse_shape = [nz + 1, ny, nx]
        f = list(filters)
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, f[0], 3, padding=1, bias=False, indice_key="subm1",
                              algo=ConvAlgo.Native),
            _norm(f[0]), nn.ReLU())
        if residual:
            self.conv1 = spconv.SparseSequential(SparseBasicBlock(f[1], "res1"), SparseBasicBlock(f[1], "res1"))
            if f[1] != f[0]:
                raise ItkdError(f"model.backbone_3d.filters: kind 'res' needs conv1 width == conv_input width, got {f[:2]}",
                                hint="residual blocks keep their width; use equal first two filters or kind 'plain'")
        else:
            self.conv1 = spconv.SparseSequential(post_act_block(f[0], f[1], "subm1"))
        pads = [1, 1, (0, 1, 1)]
        for level in range(3):
            c_in, c_out, key = f[level + 1], f[level + 2], str(level + 2)
            down = post_act_block(c_in, c_out, f"spconv{key}", stride=2, padding=pads[level], subm=False)
            if residual:
                rest = [SparseBasicBlock(c_out, f"res{key}"), SparseBasicBlock(c_out, f"res{key}")]
            else:
                rest = [post_act_block(c_out, c_out, f"subm{key}"), post_act_block(c_out, c_out, f"subm{key}")]
            setattr(self, f"conv{level + 2}", spconv.SparseSequential(down, *rest))
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(f[4], out_channels, (3, 1, 1), stride=(2, 1, 1), padding=0, bias=False,
                                indice_key="spconv_down2", algo=ConvAlgo.Native),
            _norm(out_channels), nn.ReLU())
        self.out_channels = out_channels
        self._algo_device = "cpu"

    def forward(self, voxel_features: Tensor, coords: Tensor, batch_size: int) -> spconv.SparseConvTensor:
        """Encode voxels.

        Args:
            voxel_features: (V, C_in) per-voxel features.
            coords: (V, 4) int [b, z, y, x].
            batch_size: frames B.

        Returns:
            conv_out sparse tensor, features (N, out_channels), spatial shape (nz', ny / 8, nx / 8).
        """
        if voxel_features.device.type != self._algo_device:
            set_sparse_algo(self, voxel_features.device)
            self._algo_device = voxel_features.device.type
        x = spconv.SparseConvTensor(voxel_features, coords.int(), self.sparse_shape, batch_size)
        x = self.conv_input(x)
        for name in ("conv1", "conv2", "conv3", "conv4", "conv_out"):
            x = getattr(self, name)(x)
        return x
