"""Channel-wise autoencoder shared by teacher and student, and the student adapter (itKD sec. 1).

Only 1x1 convolutions: a per-pixel MLP that compresses channels and keeps every BEV location.
Widths derive from the teacher BEV width C_t and the recipe (``latent_ratio``, ``hidden_layers``);
nothing is hard-coded.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError


def encoder_widths(c_t: int, latent_ratio: float, hidden_layers: int) -> list[int]:
    """Channel widths of the encoder, input first and latent last.

    The latent is ``round(C_t * latent_ratio)`` (at least 1). Hidden widths halve towards the
    latent, i.e. hidden k (1-based) is ``latent * 2**(hidden_layers - k + 1)`` capped at C_t, which
    reproduces the public layout C_t -> 128 -> 64 -> 32 for a latent of 32 and two hidden layers.

    Args:
        c_t: Teacher BEV width C_t.
        latent_ratio: Latent width / C_t, in (0, 1].
        hidden_layers: Hidden 1x1 layers between the input and the latent.

    Returns:
        ``[C_t, h_1, ..., h_L, latent]`` (length hidden_layers + 2).
    """
    if c_t < 1:
        raise ItkdError(f"model.backbone_2d.num_upsample_filters: teacher BEV width {c_t} must be positive")
    if not 0 < latent_ratio <= 1 or hidden_layers < 0:
        raise ItkdError("distill.itkd: latent_ratio must be in (0, 1] and hidden_layers >= 0")
    latent = max(1, int(round(c_t * latent_ratio)))
    hidden = [min(c_t, latent * 2 ** (hidden_layers - k + 1)) for k in range(1, hidden_layers + 1)]
    return [c_t, *hidden, latent]


def _mlp(widths: list[int]) -> nn.Sequential:
    """1x1 convs along ``widths`` with ReLU between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Conv2d(cin, cout, kernel_size=1))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class ChannelAutoencoder(nn.Module):
    """Shared encoder E (C_t -> latent) and decoder D (latent -> C_s) of 1x1 convs.

    No normalisation layer and no activation on the latent or on the output, as in the method.

    Args:
        c_t: Teacher BEV width.
        c_s: Student BEV width.
        latent_ratio: Latent width / C_t.
        hidden_layers: Hidden layers on each side (the decoder mirrors the encoder).
    """

    def __init__(self, c_t: int, c_s: int, latent_ratio: float, hidden_layers: int) -> None:
        super().__init__()
        widths = encoder_widths(c_t, latent_ratio, hidden_layers)
        self.widths = tuple(widths)
        self.encoder = _mlp(widths)
        self.decoder = _mlp(widths[::-1][:-1] + [c_s])

    @property
    def latent_channels(self) -> int:
        return self.widths[-1]

    def encode(self, x: Tensor, adapter: Optional[nn.Conv2d] = None, fixed: bool = False) -> Tensor:
        """E(x), or E(A(x)) when the adapter A is given: (B, C_t or C_s, H, W) -> (B, latent, H, W).

        A and E's first layer are both 1x1 convs with nothing between them, so E(A(x)) runs them as ONE
        1x1 conv of weight W_1 A and bias W_1 a + b_1: the same function and the same gradients for A
        and E (autograd goes through the small weight product), without the C_t-wide map A(x) at
        every pixel (C_s x h_1 MACs a pixel instead of C_s x C_t + C_t x h_1).

        Args:
            x: Teacher map (adapter None) or student map (with the adapter).
            adapter: The student adapter A (C_s -> C_t), or None.
            fixed: Detach E's parameters: gradients reach ``x`` (and A) but never the encoder.
        """
        y = x
        for i, layer in enumerate(self.encoder):
            if not isinstance(layer, nn.Conv2d):
                y = layer(y)
                continue
            weight, bias = (layer.weight.detach(), layer.bias.detach()) if fixed else (layer.weight, layer.bias)
            if i == 0 and adapter is not None:
                w1 = weight.flatten(1)  # (h_1, C_t)
                bias = bias if adapter.bias is None else w1 @ adapter.bias + bias
                weight = (w1 @ adapter.weight.flatten(1))[:, :, None, None]  # (h_1, C_s, 1, 1)
            y = F.conv2d(y, weight, bias)
        return y

    def decode(self, z: Tensor) -> Tensor:
        """D: (B, latent, H, W) -> (B, C_s, H, W)."""
        return self.decoder(z)


def build_adapter(c_s: int, c_t: int) -> nn.Conv2d:
    """Adapter A: 1x1 conv (B, C_s, H, W) -> (B, C_t, H, W) lifting student maps to teacher width."""
    return nn.Conv2d(c_s, c_t, kernel_size=1)
