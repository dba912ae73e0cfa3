"""The student: a narrower ModelConfig derived from the teacher's (same grid and BEV resolution, fewer
channels), the map from each student channel to the teacher channel it was cut from, and the weight
surgery that starts the student from the teacher by that map (channel selection)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.build import build_model
from itkd_cli.recipe.schema import ModelConfig, StudentConfig

POLICIES = ("neck", "full")


def scale_width(channels: int, ratio: float) -> int:
    """Scale one channel count.

    Multiples of 8 stay multiples of 8 (at least 8, hardware-friendly); other counts round to the
    nearest integer (at least 1). Never wider than the teacher.
    """
    if channels % 8 == 0:
        return min(channels, max(8, int(round(channels * ratio / 8)) * 8))
    return min(channels, max(1, int(round(channels * ratio))))


def _scale_all(values, ratio: float) -> list[int]:
    return [scale_width(int(v), ratio) for v in values]


def collapsed(channels: int, ratio: float) -> bool:
    """Whether ``ratio`` asks for less than one channel of a layer: ``scale_width`` would keep its minimum
    width (8, or 1), so the student's width would no longer follow the ratio."""
    return channels * ratio < 1


def _collapsed_layers(model_cfg: ModelConfig, ratio: float, policy: str) -> list[str]:
    """The scaled layers (``model.section.field[i]: channels``) of which ``ratio`` asks less than one channel."""
    layers = [(f"backbone_2d.{name}", model_cfg.backbone_2d.model_dump()[name])
              for name in ("num_filters", "num_upsample_filters")]
    if policy == "full":
        if model_cfg.vfe.kind == "pillar":
            layers.append(("vfe.filters", model_cfg.vfe.filters))
        if model_cfg.backbone_3d is not None:
            layers += [("backbone_3d.filters", model_cfg.backbone_3d.filters),
                       ("backbone_3d.out_channels", [model_cfg.backbone_3d.out_channels])]
        layers += [(f"head.{name}", [getattr(model_cfg.head, name)])
                   for name in ("shared_conv_channels", "head_conv_channels")]
    return [f"model.{name}[{i}]: {c}" for name, values in layers for i, c in enumerate(values) if collapsed(int(c), ratio)]


def derive_student(model_cfg: ModelConfig, ratio: float, policy: str) -> ModelConfig:
    """Student architecture for a width ``ratio`` under a width ``policy``.

    Args:
        model_cfg: the teacher's model section.
        ratio: width fraction in (0, 1].
        policy: ``neck`` (itKD paper: only backbone_2d num_filters / num_upsample_filters scale) or
            ``full`` (SparseKD style: also PFN filters, sparse 3D backbone filters + out_channels,
            head shared_conv_channels and head_conv_channels; the BEV width follows).

    Returns:
        A validated ModelConfig with the same grid, strides, tasks and post-processing.
    """
    if policy not in POLICIES:
        raise ItkdError(f"student.policy: unknown width policy {policy!r}", hint=f"choose one of {', '.join(POLICIES)}")
    if not 0 < ratio <= 1:
        raise ItkdError(f"student.ratio: {ratio:g} is not in (0, 1]", hint="e.g. 0.5 for a 1/2-width or 0.25 for a 1/4-width student")
    tiny = _collapsed_layers(model_cfg, ratio, policy)
    if tiny:
        raise ItkdError(f"student.ratio: {ratio:g} asks for less than one channel of {len(tiny)} layer(s) "
                        f"({', '.join(tiny[:4])}{', ...' if len(tiny) > 4 else ''}); they would collapse to the "
                        "minimum width", hint="choose a larger --ratio (e.g. 0.25 or 0.5)")
    data = model_cfg.model_dump(mode="python")
    neck = data["backbone_2d"]
    neck["num_filters"] = _scale_all(neck["num_filters"], ratio)
    neck["num_upsample_filters"] = _scale_all(neck["num_upsample_filters"], ratio)
    if policy == "full":
        if data["vfe"]["kind"] == "pillar":
            data["vfe"]["filters"] = _scale_all(data["vfe"]["filters"], ratio)
        if data.get("backbone_3d") is not None:
            b3 = data["backbone_3d"]
            b3["filters"] = tuple(_scale_all(b3["filters"], ratio))
            b3["out_channels"] = scale_width(b3["out_channels"], ratio)
        head = data["head"]
        head["shared_conv_channels"] = scale_width(head["shared_conv_channels"], ratio)
        head["head_conv_channels"] = scale_width(head["head_conv_channels"], ratio)
    return ModelConfig.model_validate(data)


def _block_index(teacher_widths: list[int], student_widths: list[int]) -> list[int]:
    """Teacher channel of each student channel of a concat of blocks: the leading channels of EACH block."""
    index, offset = [], 0
    for t_w, s_w in zip(teacher_widths, student_widths):
        index.extend(range(offset, offset + s_w))
        offset += t_w
    return index


def bev_channel_index(teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> list[int]:
    """Teacher channel of each channel of the student's neck output M (a concat of upsample blocks)."""
    return _block_index(teacher_cfg.backbone_2d.num_upsample_filters, student_cfg.backbone_2d.num_upsample_filters)


def concat_input_index(teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> dict[str, tuple[int, list[int]]]:
    """Where a student tensor reads a CONCATENATION of narrowed blocks, the teacher channels it keeps.

    Channel selection keeps the leading channels of every layer. A layer that reads a concat of blocks
    must then keep the leading channels of each block, not the leading channels of the concat:
    the head's shared conv reads [up_0 | up_1 | ...] of the neck, and a non-last PFN layer's output
    is [x | max(x)], read by the next PFN layer.

    Returns:
        {state-dict key: (dim, teacher indices)} for every such tensor of the student.
    """
    index = {"dense_head.shared_conv.0.weight": (1, bev_channel_index(teacher_cfg, student_cfg))}
    if teacher_cfg.vfe.kind == "pillar":  # non-last PFN layers output width // 2 doubled by the concat
        t_f, s_f = teacher_cfg.vfe.filters, student_cfg.vfe.filters
        for i in range(1, len(t_f)):
            t_half, s_half = t_f[i - 1] // 2, s_f[i - 1] // 2
            index[f"vfe.pfn_layers.{i}.linear.weight"] = (1, _block_index([t_half, t_half], [s_half, s_half]))
    return index


def channel_select(student: nn.Module, teacher: nn.Module,
                   concat_index: Optional[dict[str, tuple[int, list[int]]]] = None) -> int:
    """Initialise the student from the teacher by keeping the leading channels of every tensor.

    Args:
        student: Narrower network (same layer names).
        teacher: Trained teacher.
        concat_index: {key: (dim, teacher indices)} for tensors that read a concat of narrowed
            blocks (``concat_input_index``): along ``dim`` they keep those channels.

    Returns:
        Number of student tensors initialised (shapes must be no larger than the teacher's).
    """
    t_state, concat_index = teacher.state_dict(), concat_index or {}
    new_state, copied = {}, 0
    for key, s_val in student.state_dict().items():
        t_val = t_state.get(key)
        if t_val is None or t_val.dim() != s_val.dim() or any(s > t for s, t in zip(s_val.shape, t_val.shape)):
            new_state[key] = s_val
            continue
        if key in concat_index:
            dim, keep = concat_index[key]
            t_val = t_val.index_select(dim, torch.tensor(keep, dtype=torch.long, device=t_val.device))
        new_state[key] = t_val[tuple(slice(0, s) for s in s_val.shape)].clone()
        copied += 1
    student.load_state_dict(new_state)
    return copied


def build_student(teacher_cfg: ModelConfig, teacher: nn.Module, cfg: StudentConfig) -> tuple[ModelConfig, nn.Module]:
    """The student of ``teacher`` as the recipe's ``student`` section says: its config and its network,
    started from the teacher by channel selection when ``cfg.init_from_teacher`` (else PyTorch's init)."""
    student_cfg = derive_student(teacher_cfg, cfg.ratio, cfg.policy)
    student = build_model(student_cfg)
    if cfg.init_from_teacher:
        channel_select(student, teacher, concat_input_index(teacher_cfg, student_cfg))
    return student_cfg, student
