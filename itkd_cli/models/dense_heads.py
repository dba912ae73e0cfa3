"""CenterHead (OpenPCDet ``dense_heads``): shared 3x3 conv, then one SeparateHead per task."""

from __future__ import annotations

from torch import Tensor, nn

from itkd_cli.core.types import REG_HEADS, VEL_HEAD, TaskHeadOutput


class SeparateHead(nn.Module):
    """One branch per output (center, center_z, dim, rot, [vel], hm), each hidden convs + output conv.

    Keys: ``<name>.<k>.0`` hidden conv (bias), ``<name>.<k>.1`` BN, ``<name>.<n-1>`` output conv.
    """

    def __init__(self, in_channels: int, hidden: int, outputs: list[tuple[str, int]], num_convs: int,
                 hm_init_bias: float) -> None:
        super().__init__()
        self.names = [name for name, _ in outputs]
        for name, out in outputs:
            layers: list[nn.Module] = []
            c = in_channels
            for _ in range(num_convs - 1):
                layers.append(nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1, bias=True),
                                            nn.BatchNorm2d(hidden), nn.ReLU()))
                c = hidden
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=True))
            branch = nn.Sequential(*layers)
            if name == "hm":
                # Focal-loss prior: start with low heatmap scores everywhere.
                nn.init.constant_(branch[-1].bias, hm_init_bias)
            else:
                for m in branch.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight)
                        nn.init.zeros_(m.bias)
            setattr(self, name, branch)

    def forward(self, x: Tensor) -> TaskHeadOutput:
        """(B, C, H, W) -> TaskHeadOutput of (B, *, H, W) maps (vel None if not predicted)."""
        out = {name: getattr(self, name)(x) for name in self.names}
        return TaskHeadOutput(hm=out["hm"], center=out["center"], center_z=out["center_z"], dim=out["dim"],
                              rot=out["rot"], vel=out.get("vel"))


class CenterHead(nn.Module):
    """Shared conv (bias) + BN + ReLU, then ``heads_list`` of SeparateHead in task order."""

    def __init__(self, in_channels: int, tasks: list[list[str]], shared_channels: int, head_channels: int,
                 num_head_convs: int, with_velocity: bool, hm_init_bias: float) -> None:
        super().__init__()
        self.shared_conv = nn.Sequential(nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=True),
                                         nn.BatchNorm2d(shared_channels), nn.ReLU())
        regs = list(REG_HEADS) + ([VEL_HEAD] if with_velocity else [])
        self.heads_list = nn.ModuleList(
            SeparateHead(shared_channels, head_channels, regs + [("hm", len(task))], num_head_convs, hm_init_bias)
            for task in tasks)

    def forward(self, bev: Tensor) -> tuple[TaskHeadOutput, ...]:
        """Neck map M (B, C, H, W) -> one TaskHeadOutput per task."""
        shared = self.shared_conv(bev)
        return tuple(head(shared) for head in self.heads_list)
