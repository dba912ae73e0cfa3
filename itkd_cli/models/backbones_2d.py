"""BEV neck (OpenPCDet ``backbones_2d``): BaseBEVBackbone, multi-scale blocks upsampled and concatenated."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _block(c_in: int, c_out: int, stride: int, extra_convs: int) -> nn.Sequential:
    """ZeroPad2d + strided 3x3 conv, then ``extra_convs`` 3x3 convs; each conv is followed by BN + ReLU."""
    layers: list[nn.Module] = [nn.ZeroPad2d(1), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=0, bias=False),
                               _bn(c_out), nn.ReLU()]
    for _ in range(extra_convs):
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _bn(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


def _deblock(c_in: int, c_out: int, stride: float, use_conv_for_no_stride: bool) -> nn.Sequential:
    """Upsample by ``stride``: ConvTranspose2d (also for stride 1 unless told), Conv2d for fractions."""
    if stride > 1 or (stride == 1 and not use_conv_for_no_stride):
        k = int(round(stride))
        conv: nn.Module = nn.ConvTranspose2d(c_in, c_out, k, stride=k, bias=False)
    else:
        k = int(round(1 / stride))
        conv = nn.Conv2d(c_in, c_out, k, stride=k, bias=False)
    return nn.Sequential(conv, _bn(c_out), nn.ReLU())


class BaseBEVBackbone(nn.Module):
    """Blocks at growing strides; each block's output is brought to a common resolution and concatenated."""

    def __init__(self, in_channels: int, layer_nums: list[int], layer_strides: list[int], num_filters: list[int],
                 upsample_strides: list[float], num_upsample_filters: list[int],
                 use_conv_for_no_stride: bool = False) -> None:
        super().__init__()
        c_in = [in_channels, *num_filters[:-1]]
        self.blocks = nn.ModuleList(
            _block(c_in[i], num_filters[i], layer_strides[i], layer_nums[i]) for i in range(len(layer_nums)))
        self.deblocks = nn.ModuleList(
            _deblock(num_filters[i], num_upsample_filters[i], upsample_strides[i], use_conv_for_no_stride)
            for i in range(len(layer_nums)))
        self.out_channels = sum(num_upsample_filters)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, sum(num_upsample_filters), H * u0 / s0, W * u0 / s0)."""
        ups = []
        for block, deblock in zip(self.blocks, self.deblocks):
            x = block(x)
            ups.append(deblock(x))
        return torch.cat(ups, dim=1)
