"""Pure state-dict transforms: det3d/CenterPoint names -> OpenPCDet names, spconv weight layouts.

Everything here maps ``dict[str, Tensor] -> dict[str, Tensor]`` and never drops a key: keys that no
rule knows keep their name and surface later as "unexpected" in the comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from itkd_cli.core.errors import ItkdError

Shape = tuple[int, ...]

# spconv 5-D weight layouts -> permutation that brings a tensor of that layout to spconv 2.3 (KRSC).
LAYOUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "2.3": ("spconv 2.3 KRSC [out,k,k,k,in]", (0, 1, 2, 3, 4)),
    "1.x": ("spconv 1.x RSCK [k,k,k,in,out]", (4, 0, 1, 2, 3)),
    "2.1": ("spconv 2.0/2.1 RSKC [k,k,k,out,in]", (3, 0, 1, 2, 4)),
}

# det3d task-head branch names -> OpenPCDet names.
HEAD_NAMES = {"reg": "center", "height": "center_z", "dim": "dim", "rot": "rot", "vel": "vel", "hm": "hm"}

# Older det3d SpMiddleResNetFHD: one flat `middle_conv` Sequential (ReLUs at 2, 7, 12, 17, 22).
MIDDLE_CONV = {
    0: "conv_input.0", 1: "conv_input.1", 3: "conv1.0", 4: "conv1.1",
    5: "conv2.0.0", 6: "conv2.0.1", 8: "conv2.1", 9: "conv2.2",
    10: "conv3.0.0", 11: "conv3.0.1", 13: "conv3.1", 14: "conv3.2",
    15: "conv4.0.0", 16: "conv4.0.1", 18: "conv4.1", 19: "conv4.2",
    20: "conv_out.0", 21: "conv_out.1",
}

DET3D_PREFIXES = ("backbone.", "neck.", "bbox_head.", "reader.")
OPENPCDET_PREFIXES = ("vfe.", "backbone_3d.", "backbone_2d.", "dense_head.", "map_to_bev", "global_step")
NON_PARAMS = ("running_mean", "running_var", "num_batches_tracked", "global_step")

_FLAT = re.compile(r"^backbone\.conv([234])\.([01])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BLOCK = re.compile(r"^backbone\.conv([234])\.([34])\.(.+)$")
_MIDDLE = re.compile(r"^backbone\.middle_conv\.(\d+)\.(.+)$")
_TASK = re.compile(r"^bbox_head\.tasks\.(\d+)\.(\w+)\.(\d+)\.(.+)$")


def naming_of(keys) -> str:
    """'det3d' when the keys use det3d module names, else 'openpcdet'."""
    keys = [k for k in keys if k != "global_step"]
    det3d = sum(k.startswith(DET3D_PREFIXES) for k in keys)
    return "det3d" if keys and det3d * 2 > len(keys) else "openpcdet"


def _head_last_index(keys) -> dict[tuple[str, str], int]:
    """Index of the output conv of each det3d task branch (the largest index in that branch)."""
    last: dict[tuple[str, str], int] = {}
    for key in keys:
        m = _TASK.match(key)
        if m:
            branch = (m.group(1), m.group(2))
            last[branch] = max(last.get(branch, -1), int(m.group(3)))
    return last


def rename_det3d_key(key: str, head_last: Mapping[tuple[str, str], int]) -> str:
    """One det3d key -> its OpenPCDet name (unknown keys keep their name).

    Args:
        key: det3d key without `module.`.
        head_last: output-conv index of each (task, branch), from `_head_last_index`.
    """
    if m := _MIDDLE.match(key):
        idx = int(m.group(1))
        return f"backbone_3d.{MIDDLE_CONV[idx]}.{m.group(2)}" if idx in MIDDLE_CONV else key
    if m := _FLAT.match(key):
        return f"backbone_3d.conv{m.group(1)}.0.{m.group(2)}.{m.group(3)}"
    if m := _BLOCK.match(key):
        return f"backbone_3d.conv{m.group(1)}.{int(m.group(2)) - 2}.{m.group(3)}"
    if key.startswith("backbone.extra_conv."):
        return "backbone_3d.conv_out." + key[len("backbone.extra_conv."):]
    if m := _TASK.match(key):
        task, branch, idx, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        # det3d SepHead: [conv, BN, ReLU] * hidden + conv; OpenPCDet: [[conv, BN, ReLU]] * hidden + conv.
        pos = str(idx // 3) if idx == head_last[(task, branch)] else f"{idx // 3}.{idx % 3}"
        return f"dense_head.heads_list.{task}.{HEAD_NAMES.get(branch, branch)}.{pos}.{rest}"
    for old, new in (("backbone.", "backbone_3d."), ("neck.", "backbone_2d."),
                     ("bbox_head.", "dense_head."), ("reader.", "vfe.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def det3d_to_openpcdet(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every det3d key to OpenPCDet's name (order kept, tensors untouched)."""
    last = _head_last_index(sd)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = rename_det3d_key(key, last)
        if new in out:
            raise ItkdError(f"{key}: maps onto {new}, which another key already took")
        out[new] = value
    return out


def spconv_keys(sd: Mapping[str, Tensor]) -> list[str]:
    """Keys of the 5-D sparse-conv weights."""
    return [k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 5]


def to_krsc_shape(shape: Shape, layout: str) -> Shape:
    """Shape a 5-D weight of ``layout`` takes in spconv 2.3 (KRSC)."""
    return tuple(shape[i] for i in LAYOUTS[layout][1])


def _out_hint(key: str, sd: Mapping[str, Tensor]) -> Optional[int]:
    """Output channels of a sparse conv read from its bias or the BatchNorm right after it."""
    base = key[: -len(".weight")]
    candidates = [base + ".bias"]
    if m := re.match(r"^(.*)\.(\d+)$", base):
        candidates.append(f"{m.group(1)}.{int(m.group(2)) + 1}.weight")
    if m := re.match(r"^(.*)\.conv(\d+)$", base):
        candidates.append(f"{m.group(1)}.bn{m.group(2)}.weight")
    for cand in candidates:
        if cand in sd and sd[cand].dim() == 1:
            return int(sd[cand].shape[0])
    return None


def _consistent(key: str, sd: Mapping[str, Tensor], expected: Optional[Mapping[str, Shape]]) -> set[str]:
    """Layouts under which ``sd[key]`` fits the target shape (or, without target, its bias/BN width)."""
    shape = tuple(sd[key].shape)
    if expected is not None and key in expected:
        fits = {lay for lay in LAYOUTS if to_krsc_shape(shape, lay) == tuple(expected[key])}
        if fits:
            return fits
        # fits no layout: a wrong recipe (reported as a mismatch); the file's own widths still tell.
    out = _out_hint(key, sd)
    if out is None:
        return set(LAYOUTS)
    return {lay for lay in LAYOUTS if to_krsc_shape(shape, lay)[0] == out}


@dataclass
class LayoutDecision:
    """Result of spconv layout detection: layout name ('2.3', '1.x', '2.1') or None (no 5-D weights)."""

    layout: Optional[str]
    deciding: list[str] = field(default_factory=list)  # keys whose shape decided it
    ambiguous: bool = False


def detect_spconv_layout(sd: Mapping[str, Tensor], expected: Optional[Mapping[str, Shape]] = None) -> LayoutDecision:
    """Decide the spconv weight layout of a whole (OpenPCDet-named) state dict.

    Only layers that fit some but not all layouts are evidence (in == out layers with cubic kernels fit
    all three). All evidence must agree; conflicting evidence is an error, never a per-layer guess.

    Raises:
        ItkdError: two layers imply different layouts.
    """
    keys = spconv_keys(sd)
    if not keys:
        return LayoutDecision(None)
    votes: dict[str, set[str]] = {}
    for key in keys:
        fits = _consistent(key, sd, expected)
        if fits and fits != set(LAYOUTS):
            votes[key] = fits
    common = set(LAYOUTS)
    for fits in votes.values():
        common &= fits
    if votes and not common:
        shown = "; ".join(f"{k} {list(sd[k].shape)} fits {sorted(v)}" for k, v in list(votes.items())[:4])
        raise ItkdError(f"spconv weights disagree on their layout: {shown}",
                        hint="the checkpoint mixes layouts or does not match the recipe's architecture")
    if len(common) == 1:
        return LayoutDecision(common.pop(), deciding=sorted(votes))
    return LayoutDecision(None, ambiguous=True)


def apply_layout(sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Permute every 5-D weight from ``layout`` to spconv 2.3 KRSC (contiguous copies)."""
    perm = LAYOUTS[layout][1]
    if perm == (0, 1, 2, 3, 4):
        return dict(sd)
    todo = set(spconv_keys(sd))
    return {k: (v.permute(*perm).contiguous() if k in todo else v) for k, v in sd.items()}


def transpose_deblocks(sd: Mapping[str, Tensor], conv_transpose_keys: set[str]) -> tuple[dict[str, Tensor], list[str]]:
    """det3d stride-1 deblocks are Conv2d [out,in,1,1]; OpenPCDet's are ConvTranspose2d [in,out,1,1].

    Args:
        sd: OpenPCDet-named state dict converted from det3d.
        conv_transpose_keys: weight keys whose module in the target model is a ConvTranspose2d.

    Returns:
        The state dict with those 1x1 deblock weights transposed (0, 1), and the keys transposed.
    """
    out, done = dict(sd), []
    for key in sorted(conv_transpose_keys):
        value = sd.get(key)
        # det3d builds a ConvTranspose2d only for strides > 1 (kernel = stride > 1): 1x1 means Conv2d.
        if key.startswith("backbone_2d.deblocks.") and value is not None and value.dim() == 4 \
                and tuple(value.shape[2:]) == (1, 1):
            out[key] = value.transpose(0, 1).contiguous()
            done.append(key)
    return out, done


@dataclass
class KeyDiff:
    """Differences between a converted state dict and the target's keys/shapes."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # key, checkpoint, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, limit: int = 10) -> list[str]:
        """Human lines: first ``limit`` of each kind, then a count."""
        out: list[str] = []
        for title, items in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected),
                             ("shape mismatch", [f"{k} checkpoint {list(a)} vs model {list(b)}"
                                                 for k, a, b in self.mismatched])):
            if items:
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                out.append(f"{title} ({len(items)}): {', '.join(items[:limit])}{more}")
        return out


def compare(sd: Mapping[str, Tensor], expected: Mapping[str, Shape]) -> KeyDiff:
    """Missing / unexpected / shape-mismatched keys of ``sd`` against the target shapes."""
    diff = KeyDiff()
    diff.missing = [k for k in expected if k not in sd]
    diff.unexpected = [k for k in sd if k not in expected]
    diff.mismatched = [(k, tuple(v.shape), tuple(expected[k])) for k, v in sd.items()
                       if k in expected and tuple(v.shape) != tuple(expected[k])]
    return diff


def count_params(sd: Mapping[str, Tensor]) -> int:
    """Learnable parameters (BN running stats, counters and global_step excluded)."""
    return sum(v.numel() for k, v in sd.items() if not k.endswith(NON_PARAMS))


@dataclass
class Converted:
    """A state dict in our layout (OpenPCDet names, spconv 2.3) and how it got there."""

    state_dict: dict[str, Tensor]
    naming: str  # 'det3d' or 'openpcdet' (names found in the file)
    layout: Optional[str]  # spconv layout found in the file; None without sparse convs
    layout_source: str  # 'detected' | 'given' | 'format' | 'none'
    deciding: list[str]
    transposed: list[str]
    added: list[str]
    diff: Optional[KeyDiff]


def convert_state_dict(sd: Mapping[str, Tensor], expected: Optional[Mapping[str, Shape]] = None,
                       conv_transpose_keys: Optional[set[str]] = None, layout: Optional[str] = None,
                       default_layout: Optional[str] = None) -> Converted:
    """Bring any CenterPoint state dict to our layout and compare it with the target.

    Args:
        sd: keys without `module.` (det3d or OpenPCDet names), any spconv layout.
        expected: target key -> shape (our model's state dict); None when no recipe is given.
        conv_transpose_keys: weight keys whose target module is a ConvTranspose2d.
        layout: force a spconv layout ('2.3', '1.x', '2.1') instead of detecting it.
        default_layout: layout to assume when detection has no evidence (our own files: '2.3').

    Raises:
        ItkdError: conflicting or missing layout evidence, or a key collision.
    """
    naming = naming_of(sd)
    out = det3d_to_openpcdet(sd) if naming == "det3d" else dict(sd)
    transposed: list[str] = []
    if naming == "det3d" and conv_transpose_keys:
        out, transposed = transpose_deblocks(out, conv_transpose_keys)
    source, deciding = "given", []
    if layout is None:
        found = detect_spconv_layout(out, expected)
        layout, deciding, source = found.layout, found.deciding, "detected"
        if found.ambiguous:
            if default_layout is None:
                raise ItkdError(
                    "spconv weight layout cannot be told from the shapes (every sparse conv has in == out "
                    "channels and a cubic kernel)",
                    hint="pass --spconv-layout 2.3|2.1|1.x (det3d release checkpoints are 1.x)")
            layout, source = default_layout, "format"
        elif layout is None:
            source = "none"
    elif layout not in LAYOUTS:
        raise ItkdError(f"spconv layout {layout!r}: unknown", hint=f"use one of {', '.join(LAYOUTS)}")
    if layout is not None:
        out = apply_layout(out, layout)
    added = []
    if "global_step" not in out and (expected is None or "global_step" in expected):
        out["global_step"] = torch.zeros(1, dtype=torch.int64)  # OpenPCDet's buffer; det3d has none
        added.append("global_step")
    diff = compare(out, expected) if expected is not None else None
    return Converted(out, naming, layout, source, deciding, transposed, added, diff)


def _dim(sd: Mapping[str, Tensor], key: str, axis: int = 0) -> Optional[int]:
    return int(sd[key].shape[axis]) if key in sd and sd[key].dim() > axis else None


def _indexed(sd: Mapping[str, Tensor], pattern: str) -> dict[int, str]:
    """{i: key} for keys matching ``pattern`` with one (\\d+) group."""
    rx = re.compile(pattern)
    return {int(m.group(1)): k for k in sd if (m := rx.match(k))}


def describe(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture facts read from the shapes of an OpenPCDet-named, spconv-2.3 state dict."""
    facts: dict[str, Any] = {}
    pfn = _indexed(sd, r"^vfe\.pfn_layers\.(\d+)\.linear\.weight$")
    if pfn:
        outs = [_dim(sd, pfn[i]) for i in sorted(pfn)]
        # OpenPCDet PFN layers before the last output half their width (the max is concatenated).
        facts.update(encoder="pillar", vfe_filters=[2 * o for o in outs[:-1]] + outs[-1:],
                     point_features=_dim(sd, pfn[0], 1) - 6, bev_width=outs[-1])
    elif "backbone_3d.conv_input.0.weight" in sd:
        res = "backbone_3d.conv1.0.conv1.weight" in sd
        first = ["conv1.0.conv1" if res else "conv1.0.0"] + [f"conv{i}.0.0" for i in (2, 3, 4)]
        filters = [_dim(sd, "backbone_3d.conv_input.0.weight")] + [_dim(sd, f"backbone_3d.{k}.weight") for k in first]
        facts.update(encoder="voxel", backbone_3d="res" if res else "plain", backbone_3d_filters=filters,
                     backbone_3d_out=_dim(sd, "backbone_3d.conv_out.0.weight"),
                     point_features=_dim(sd, "backbone_3d.conv_input.0.weight", 4),
                     bev_width=_dim(sd, "backbone_2d.blocks.0.1.weight", 1))
    else:
        facts["encoder"] = "unknown"
    blocks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("backbone_2d.blocks.")})
    facts["neck_filters"] = [_dim(sd, f"backbone_2d.blocks.{i}.1.weight") for i in blocks]
    facts["neck_layer_nums"] = [sum(1 for k, v in sd.items() if k.startswith(f"backbone_2d.blocks.{i}.")
                                    and v.dim() == 4) - 1 for i in blocks]
    decks = sorted({int(k.split(".")[2]) for k in sd if k.startswith("backbone_2d.deblocks.")})
    facts["neck_upsample_filters"] = [_dim(sd, f"backbone_2d.deblocks.{i}.1.weight") for i in decks]
    facts["neck_out"] = sum(x or 0 for x in facts["neck_upsample_filters"]) or None
    facts["shared_conv"] = _dim(sd, "dense_head.shared_conv.0.weight")
    hm = _indexed(sd, r"^dense_head\.heads_list\.(\d+)\.hm\.\d+\.weight$")
    facts["classes_per_task"] = [_dim(sd, hm[t]) for t in sorted(hm)]
    facts["num_tasks"] = len(hm)
    facts["head_conv"] = _dim(sd, "dense_head.heads_list.0.hm.0.0.weight")
    facts["with_velocity"] = any(".vel." in k for k in sd if k.startswith("dense_head."))
    return facts
