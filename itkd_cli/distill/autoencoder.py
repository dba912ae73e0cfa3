"""Channel-wise autoencoder shared by teacher and student, and the student adapter (itKD sec. 1).

Only 1x1 convolutions: a per-pixel MLP that compresses channels and keeps every BEV location.
Widths derive from the teacher BEV width C_t and the recipe (``latent_ratio``, ``hidden_layers``);
nothing is hard-coded.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

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

    def encode(self, x: Tensor) -> Tensor:
        """E: (B, C_t, H, W) -> (B, latent, H, W)."""
        return self.encoder(x)

    def encode_fixed(self, x: Tensor) -> Tensor:
        """E(x) with E's parameters detached: gradients reach ``x`` but never the encoder."""
        params = {name: p.detach() for name, p in self.encoder.named_parameters()}
        return functional_call(self.encoder, params, (x,))

    def decode(self, z: Tensor) -> Tensor:
        """D: (B, latent, H, W) -> (B, C_s, H, W)."""
        return self.decoder(z)


def build_adapter(c_s: int, c_t: int) -> nn.Conv2d:
    """Adapter A: 1x1 conv (B, C_s, H, W) -> (B, C_t, H, W) lifting student maps to teacher width."""
    return nn.Conv2d(c_s, c_t, kernel_size=1)
