"""Export wrappers: tensors in, a flat tuple of named tensors out (what an ONNX graph can return).

Two graphs exist:
  * pillar models: pillar tensors (P, max_points, F), (P,), (P, 4) -> PillarVFE -> scatter -> neck -> heads;
  * voxel models: only the dense part, BEV map (1, C, H, W) -> neck -> heads (the sparse 3D encoder has no
    standard ONNX form, see docs/interop.md).
Either graph can end with top-K decoding (``decode_task``: post.top_k peaks per task, no threshold, no NMS)
so it returns boxes, scores and labels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from itkd_cli.core.types import REG_HEADS, VEL_HEAD, DetectorOutput, TaskHeadOutput
from itkd_cli.models.decode import decode_task, task_label_maps
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.recipe.schema import ModelConfig

PILLAR_INPUTS = ("features", "num_points", "coords")
DENSE_INPUTS = ("bev",)
DECODE_OUTPUTS = ("boxes", "scores", "labels")


def head_fields(model_cfg: ModelConfig) -> list[str]:
    """Names of one task's raw maps in output order: hm, center, center_z, dim, rot(, vel)."""
    regs = [name for name, _ in REG_HEADS] + ([VEL_HEAD[0]] if model_cfg.head.with_velocity else [])
    return ["hm", *regs]


def raw_output_names(model_cfg: ModelConfig) -> list[str]:
    """``task<t>_<field>`` for every task and field, task-major (e.g. task0_hm, task0_center, ...)."""
    return [f"task{t}_{f}" for t in range(len(model_cfg.head.tasks)) for f in head_fields(model_cfg)]


def output_names(model_cfg: ModelConfig, with_decode: bool) -> list[str]:
    """Graph output names: the raw head maps, or boxes/scores/labels when decoding is in the graph."""
    return list(DECODE_OUTPUTS) if with_decode else raw_output_names(model_cfg)


def flatten_tasks(tasks: Sequence[TaskHeadOutput], model_cfg: ModelConfig) -> tuple[Tensor, ...]:
    """TaskHeadOutputs -> flat tuple in ``raw_output_names`` order, each (1, *, H, W)."""
    fields = head_fields(model_cfg)
    return tuple(getattr(task, f) for task in tasks for f in fields)


def unflatten_tasks(flat: Sequence[Tensor], model_cfg: ModelConfig) -> tuple[TaskHeadOutput, ...]:
    """Inverse of ``flatten_tasks`` (vel is None for models without velocity)."""
    fields = head_fields(model_cfg)
    n = len(fields)
    out = []
    for t in range(len(model_cfg.head.tasks)):
        maps = dict(zip(fields, flat[t * n:(t + 1) * n]))
        out.append(TaskHeadOutput(hm=maps["hm"], center=maps["center"], center_z=maps["center_z"],
                                  dim=maps["dim"], rot=maps["rot"], vel=maps.get("vel")))
    return tuple(out)


class TopKDecode(nn.Module):
    """Top-K peaks of every task decoded into boxes, in the graph (no score threshold, no NMS).

    Uses the same ``decode_task`` as evaluation, so PyTorch and the graph decode identically.

    Args:
        model_cfg: grid, head stride and ``post.top_k`` (K per task; circle NMS adds decode's 3x3 peak filter).
        class_names: dataset classes; labels are 0-based indices into them.
    """

    def __init__(self, model_cfg: ModelConfig, class_names: Sequence[str]) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        for t, labels in enumerate(task_label_maps(model_cfg, class_names)):
            # Buffers become graph constants: task class index -> dataset class index.
            self.register_buffer(f"lut{t}", torch.tensor(labels, dtype=torch.long), persistent=False)

    def forward(self, tasks: tuple[TaskHeadOutput, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """Batch-1 head maps -> boxes (K, 9) x,y,z,dx,dy,dz,yaw,vx,vy; scores (K,); labels (K,) int64.

        K = sum over tasks of min(post.top_k, n_classes * H * W); rows are task-major, best score first
        inside each task.
        """
        boxes, scores, labels = [], [], []
        for t, task in enumerate(tasks):
            b, s, c = decode_task(task, self.model_cfg)
            boxes.append(b[0])
            scores.append(s[0])
            labels.append(getattr(self, f"lut{t}")[c[0]])
        return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


class PillarGraph(nn.Module):
    """Whole pillar CenterPoint for one frame: pillar tensors -> raw head maps (or decoded boxes).

    Args:
        model: a pillar CenterPoint in eval mode.
        model_cfg: the model recipe (output order).
        decoder: a TopKDecode to append, or None for raw outputs.
    """

    def __init__(self, model: CenterPoint, model_cfg: ModelConfig, decoder: TopKDecode | None = None) -> None:
        super().__init__()
        if model.backbone_3d is not None:
            raise ValueError("PillarGraph needs a pillar model (no sparse 3D backbone)")
        self.model = model
        self.decoder = decoder
        self._cfg = model_cfg

    def forward(self, features: Tensor, num_points: Tensor, coords: Tensor) -> tuple[Tensor, ...]:
        """Export entry point.

        Args:
            features: (P, max_points, F) zero-padded pillar points, P dynamic.
            num_points: (P,) int32 real points per pillar.
            coords: (P, 4) int32 [0, 0, y, x] (batch index 0, z cell 0).

        Returns:
            raw maps in ``raw_output_names`` order, each (1, *, H, W); or boxes, scores, labels.
        """
        bev = self.model.forward_bev(features, num_points, coords, 1)
        tasks = self.model.forward_head(bev)
        if self.decoder is not None:
            return self.decoder(tasks)
        return flatten_tasks(tasks, self._cfg)


class DenseGraph(nn.Module):
    """Dense part of a voxel CenterPoint: BEV map (HeightCompression output) -> neck -> heads.

    Args:
        model: a CenterPoint in eval mode (its sparse part is not used).
        model_cfg: the model recipe (output order).
        decoder: a TopKDecode to append, or None for raw outputs.
    """

    def __init__(self, model: CenterPoint, model_cfg: ModelConfig, decoder: TopKDecode | None = None) -> None:
        super().__init__()
        self.backbone_2d = model.backbone_2d
        self.dense_head = model.dense_head
        self.decoder = decoder
        self._cfg = model_cfg

    def forward(self, bev: Tensor) -> tuple[Tensor, ...]:
        """(1, bev_in_channels, H0, W0) BEV map -> raw maps (1, *, H, W) or boxes, scores, labels."""
        tasks = self.dense_head(self.backbone_2d(bev))
        if self.decoder is not None:
            return self.decoder(tasks)
        return flatten_tasks(tasks, self._cfg)


def build_graph(model: CenterPoint, model_cfg: ModelConfig, class_names: Sequence[str],
                with_decode: bool) -> nn.Module:
    """The export module of a model: PillarGraph for pillar models, DenseGraph for voxel models (eval mode)."""
    decoder = TopKDecode(model_cfg, class_names) if with_decode else None
    if model_cfg.vfe.kind == "pillar":
        graph: nn.Module = PillarGraph(model, model_cfg, decoder)
    else:
        graph = DenseGraph(model, model_cfg, decoder)
    return graph.eval()


def as_detector_output(flat: Sequence[Tensor], model_cfg: ModelConfig) -> DetectorOutput:
    """Raw graph outputs -> DetectorOutput for ``models.decode`` (bev is not a graph output: empty)."""
    tasks = unflatten_tasks(flat, model_cfg)
    return DetectorOutput(bev=tasks[0].hm.new_zeros(0), tasks=tasks)
