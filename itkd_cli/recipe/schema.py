"""Pydantic schema of a recipe: every width, weight and path of a job lives here.

Every field carries a description; `itkd recipe show` and the CLI help are generated from them.
Unknown keys are rejected (``extra="forbid"``) so typos never pass silently.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import ConfigDict, Field, model_validator

# The dataset section and the base class live in dataset_schema; importing them here keeps
# ``from itkd_cli.recipe.schema import DatasetConfig`` (and friends) working everywhere.
from itkd_cli.recipe.dataset_schema import (  # noqa: F401 - re-exported
    NUSCENES_CLASSES, AugmentConfig, DatasetConfig, SampledIntervalConfig, Strict, UnlabeledConfig,
)


# ---------------------------------------------------------------------------------------- model
class GridConfig(Strict):
    point_range: tuple[float, float, float, float, float, float] = Field(
        ..., description="x_min, y_min, z_min, x_max, y_max, z_max (m) in the LiDAR frame.")
    voxel_size: tuple[float, float, float] = Field(..., description="Voxel/pillar size x, y, z (m).")
    max_points_per_voxel: int = Field(..., ge=1, description="Points kept per voxel/pillar.")
    max_voxels_train: int = Field(..., ge=1, description="Voxels kept per training frame.")
    max_voxels_eval: int = Field(..., ge=1, description="Voxels kept per evaluation frame.")

    @model_validator(mode="after")
    def _check_range(self) -> "GridConfig":
        lo, hi = self.point_range[:3], self.point_range[3:]
        for axis, a, b, v in zip("xyz", lo, hi, self.voxel_size):
            if b <= a:
                raise ValueError(f"point_range: {axis}_max must exceed {axis}_min")
            if v <= 0:
                raise ValueError(f"voxel_size: {axis} must be positive")
            cells = (b - a) / v
            if abs(cells - round(cells)) > 1e-4:
                raise ValueError(f"point_range/voxel_size: {axis} extent {b - a:g} m is not a multiple of {v:g} m")
        return self

    @property
    def grid_size(self) -> tuple[int, int, int]:
        """Cells along x, y, z."""
        return tuple(int(round((self.point_range[i + 3] - self.point_range[i]) / self.voxel_size[i])) for i in range(3))


class PillarVFEConfig(Strict):
    kind: Literal["pillar"] = "pillar"
    filters: list[int] = Field([64, 64], min_length=1, description="PFN layer widths; the last is the BEV width.")


class MeanVFEConfig(Strict):
    kind: Literal["mean"] = "mean"


VFEConfig = Annotated[Union[PillarVFEConfig, MeanVFEConfig], Field(discriminator="kind")]


class Backbone3DConfig(Strict):
    kind: Literal["res", "plain"] = Field("res", description="VoxelResBackBone8x (res) or VoxelBackBone8x (plain).")
    filters: tuple[int, int, int, int, int] = Field(
        (16, 16, 32, 64, 128), description="conv_input, conv1..conv4 widths.")
    out_channels: int = Field(128, ge=1, description="conv_out width (BEV width = out_channels x z-cells).")


class Backbone2DConfig(Strict):
    layer_nums: list[int] = Field(..., min_length=1, description="3x3 convs per block after the first.")
    layer_strides: list[int] = Field(..., description="Stride of each block's first conv.")
    num_filters: list[int] = Field(..., description="Width of each block.")
    upsample_strides: list[float] = Field(..., description="Deblock strides (fractions down-sample).")
    num_upsample_filters: list[int] = Field(..., description="Width of each deblock; their sum is the BEV map width.")
    use_conv_for_no_stride: bool = Field(False, description="Stride-1 deblocks as Conv2d instead of ConvTranspose2d.")

    @model_validator(mode="after")
    def _same_lengths(self) -> "Backbone2DConfig":
        n = len(self.layer_nums)
        for name in ("layer_strides", "num_filters", "upsample_strides", "num_upsample_filters"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: needs {n} entries like layer_nums")
        return self


class HeadConfig(Strict):
    tasks: list[list[str]] = Field(..., min_length=1, description="Class names of each task head.")
    shared_conv_channels: int = Field(64, ge=1, description="Width of the shared 3x3 conv.")
    head_conv_channels: int = Field(64, ge=1, description="Width of each branch's hidden 3x3 conv.")
    num_head_convs: int = Field(2, ge=1, description="Convs per branch (hidden + output).")
    with_velocity: bool = Field(True, description="Predict (vx, vy) (nuScenes).")
    hm_init_bias: float = Field(-2.19, description="Initial bias of heatmap outputs.")
    gaussian_overlap: float = Field(0.1, gt=0, lt=1, description="Target heatmap gaussian overlap.")
    min_radius: int = Field(2, ge=0, description="Minimum gaussian radius (cells).")
    max_objects: int = Field(500, ge=1, description="Object slots per frame and task.")
    code_weights: list[float] = Field(
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2],
        description="Regression weights of [dx, dy, z, log dims x3, cos, sin, vx, vy].")
    cls_weight: float = Field(1.0, ge=0, description="Heatmap (focal) loss weight.")
    loc_weight: float = Field(0.25, ge=0, description="Box regression loss weight.")

    @property
    def code_size(self) -> int:
        return 10 if self.with_velocity else 8

    @model_validator(mode="after")
    def _check(self) -> "HeadConfig":
        if len(self.code_weights) != self.code_size:
            raise ValueError(f"code_weights: needs {self.code_size} entries (with_velocity={self.with_velocity})")
        for i, task in enumerate(self.tasks):
            if not task:
                raise ValueError(f"tasks.{i}: empty task")
        return self


class PostProcessConfig(Strict):
    top_k: int = Field(500, ge=1, description="Heatmap peaks decoded per task, over its classes (OpenPCDet MAX_OBJ_PER_SAMPLE).")
    score_threshold: float = Field(0.1, ge=0, le=1, description="Drop peaks scoring at or below this (OpenPCDet SCORE_THRESH).")
    pre_max: int = Field(1000, ge=1, description="Best boxes per task, after threshold and range, entering NMS (NMS_PRE_MAXSIZE).")
    post_max: int = Field(83, ge=1, description="Boxes kept per task after NMS (OpenPCDet NMS_POST_MAXSIZE).")
    nms: Literal["rotated", "circle", "none"] = Field("rotated", description="NMS in each task; circle: 3x3 peaks, no pre_max cut.")
    nms_iou: float = Field(0.2, ge=0, le=1, description="Rotated BEV IoU threshold (OpenPCDet NMS_THRESH).")
    circle_radius: float = Field(4.0, gt=0, description="Circle-NMS centre distance (m).")
    limit_range: tuple[float, float, float, float, float, float] = Field(
        (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0), description="Boxes centred outside are dropped (POST_CENTER_LIMIT_RANGE).")


class ModelConfig(Strict):
    num_point_features: int = Field(5, ge=3, description="Per-point features: x, y, z, intensity, time lag.")
    grid: GridConfig = Field(..., description="Voxel grid.")
    vfe: VFEConfig = Field(..., description="Point encoder: pillar (PillarVFE + scatter) or mean (MeanVFE + sparse 3D).")
    backbone_3d: Optional[Backbone3DConfig] = Field(None, description="Sparse 3D backbone (voxel models only).")
    backbone_2d: Backbone2DConfig = Field(..., description="BEV neck.")
    head: HeadConfig = Field(..., description="CenterHead.")
    post: PostProcessConfig = Field(default_factory=PostProcessConfig, description="Decoding and NMS.")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        nz = self.grid.grid_size[2]
        if self.vfe.kind == "pillar":
            if self.backbone_3d is not None:
                raise ValueError("backbone_3d: pillar models have no sparse 3D backbone (remove it)")
            if nz != 1:
                raise ValueError(f"grid.voxel_size: pillar models need one z cell, got {nz}")
        else:
            if self.backbone_3d is None:
                raise ValueError("backbone_3d: required when vfe.kind is 'mean'")
            if self.bev_z_cells < 1:
                raise ValueError(f"grid: {nz} z cells leave no height after the 8x sparse backbone")
        strides = [s / u for s, u in zip(self.backbone_2d.cumulative_strides, self.backbone_2d.upsample_strides)]
        if any(abs(s - strides[0]) > 1e-6 for s in strides):
            raise ValueError("backbone_2d: every deblock must end at the same resolution (stride x upsample)")
        nx, ny, _ = self.grid.grid_size
        enc = 1 if self.vfe.kind == "pillar" else 8
        deepest = enc * max(self.backbone_2d.cumulative_strides)
        if nx % deepest or ny % deepest:
            raise ValueError(f"grid: {nx}x{ny} cells must be divisible by {deepest} (encoder x neck strides) "
                             "so that every neck level upsamples back to the same size")
        if nx % self.feature_map_stride or ny % self.feature_map_stride:
            raise ValueError(f"grid: {nx}x{ny} cells not divisible by the head stride {self.feature_map_stride}")
        return self

    @property
    def bev_z_cells(self) -> int:
        """Height cells left after the sparse backbone (HeightCompression stacks them)."""
        if self.vfe.kind == "pillar":
            return 1
        # OpenPCDet VoxelBackBone8x / VoxelResBackBone8x: the sparse shape has nz + 1 z cells;
        # conv2/conv3 k3 s2 p1 -> (n-1)//2+1; conv4 k3 s2 pad_z 0 and conv_out k3 s2 p0 -> (n-3)//2+1.
        nz = self.grid.grid_size[2] + 1
        for _ in range(2):
            nz = (nz - 1) // 2 + 1
        for _ in range(2):
            nz = (nz - 3) // 2 + 1
        return nz

    @property
    def bev_in_channels(self) -> int:
        """Width of the BEV map entering the neck."""
        if self.vfe.kind == "pillar":
            return self.vfe.filters[-1]
        return self.backbone_3d.out_channels * self.bev_z_cells

    @property
    def bev_out_channels(self) -> int:
        """Width of the neck output M (the distillation tap)."""
        return sum(self.backbone_2d.num_upsample_filters)

    @property
    def feature_map_stride(self) -> int:
        """Grid cells per head cell."""
        enc = 1 if self.vfe.kind == "pillar" else 8
        out = self.backbone_2d.cumulative_strides[0] / self.backbone_2d.upsample_strides[0]
        return int(round(enc * out))

    @property
    def head_map_size(self) -> tuple[int, int]:
        """(H, W) of the head maps: (ny, nx) / stride."""
        nx, ny, _ = self.grid.grid_size
        return ny // self.feature_map_stride, nx // self.feature_map_stride


def _cumulative(strides: list[int]) -> list[int]:
    out, acc = [], 1
    for s in strides:
        acc *= s
        out.append(acc)
    return out


Backbone2DConfig.cumulative_strides = property(lambda self: _cumulative(self.layer_strides))  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- student / distillation
class StudentConfig(Strict):
    ratio: float = Field(0.25, gt=0, le=1, description="Student width as a fraction of the teacher's.")
    policy: Literal["neck", "full"] = Field(
        "neck", description="neck: scale only the 2D neck (itKD paper); full: also 3D backbone, BEV and head shared conv (SparseKD).")
    init_from_teacher: bool = Field(True, description=(
        "Start the student from the teacher's weights by channel selection (the leading channels of every "
        "layer and of every concatenated block); false trains it from random init as in the itKD paper."))


# The form's own lambda when ``distill.itkd.lam`` is not set (see ItkdLossConfig.form) ...
FORM_LAMBDA = {"default": 0.1, "paper": 0.5}
# ... and the default form's with ``dataset.unlabeled``: a pool frame learns from the KD terms alone, which 0.1
# weighs at a ninth of a labeled frame's detection loss (measured better: benchmarks/RESULTS.md).
POOL_LAMBDA = 0.5
# Fields of earlier itkd versions: measured no better and removed (refused with this reason and the last
# commit that has them, for anyone who needs to rerun an old measurement) ...
REMOVED_FIELDS = {
    "distill.itkd.tap": ("measured no better than the neck tap", "081ac1d"),
    "distill.itkd.head_smooth_beta": ("measured no better than the L1 head loss", "081ac1d"),
    "distill.lam_schedule": ("measured no better than a constant lambda", "081ac1d"),
    "distill.kd_until": ("measured no better than KD to the end of training", "081ac1d"),
    "distill.itkd.head_fusion_guard": ("the fusion is always guarded (a convex mix of inter and intra)", "081ac1d"),
    "distill.kd_warmup": ("measured no better than KD from the first step", "353076a"),
    "distill.teacher_bn": ("measured no better than the teacher's running statistics", "353076a"),
}
# ... or folded into ``distill.itkd.form`` (the default form has the measured-better setting, paper the method's).
FOLDED_FIELDS = ("distill.itkd.head_standardize", "distill.itkd.detach_student_target",
                 "distill.itkd.adapter_init", "distill.itkd.cr_normalize", "distill.itkd.cr_trains_encoder")


class ItkdLossConfig(Strict):
    form: Literal["default", "paper"] = Field("default", description=(
        "'default': itkd's measured-better itKD (head loss on channels standardised by the teacher's RMS, "
        "adapter started as the channel selection, student map detached as the T->S target, L_cr in units "
        "of the teacher code's std without training the encoder, lambda 0.1 (0.5 with dataset.unlabeled); "
        "benchmarks/RESULTS.md). "
        "'paper': the published formulas of the public code (raw head channels, random adapter, plain L1 "
        "L_cr through the encoder, MSE and attention normalised by the max_objects slots, lambda 0.5), "
        "with its six defects fixed."))
    lam: Optional[float] = Field(None, ge=0, le=1, description=(
        "lambda: L = lam * KD + (1 - lam) * L_det; unset: the form's (default 0.1, or 0.5 with "
        "dataset.unlabeled; paper 0.5)."))
    w_cr: float = Field(1.0, ge=0, description="Weight of the compressed-representation loss (0 disables).")
    w_it: float = Field(1.0, ge=0, description="Weight of the interchange-transfer loss (0 disables).")
    w_head: float = Field(1.0, ge=0, description="Weight of the head relation-aware attention loss (0 disables).")
    latent_ratio: float = Field(1 / 12, gt=0, le=1, description=(
        "Autoencoder latent width / teacher BEV width; 1/12 is the public code's 384 -> 128 -> 64 -> 32."))
    hidden_layers: int = Field(2, ge=0, description="Hidden 1x1 layers between input and latent (widths halve).")

    def lam_value(self, pooled: bool) -> float:
        """lambda in force: the recipe's, else the form's own (``POOL_LAMBDA`` for the default form when the run
        mixes ``dataset.unlabeled`` into its batches, ``pooled``)."""
        if self.lam is not None:
            return self.lam
        return POOL_LAMBDA if pooled and self.form == "default" else FORM_LAMBDA[self.form]

    @property
    def paper(self) -> bool:
        """Whether the published formulas are used (``form: paper``)."""
        return self.form == "paper"


class BaselineLossConfig(Strict):
    lam: float = Field(0.5, ge=0, le=1, description="lambda: L = lam * KD + (1 - lam) * L_det.")
    temperature: float = Field(2.0, gt=0, description="hinton: softening temperature of the heatmaps.")
    fg_threshold: float = Field(0.1, ge=0, le=1, description="sparsekd: teacher heatmap score marking foreground.")
    label_score: float = Field(0.3, ge=0, le=1, description="sparsekd: teacher boxes above this become labels.")


class DistillConfig(Strict):
    method: Literal["itkd", "none", "hinton", "fitnet", "sparsekd"] = Field("itkd", description="Distillation method.")
    itkd: ItkdLossConfig = Field(default_factory=ItkdLossConfig, description="itKD settings.")
    baseline: BaselineLossConfig = Field(default_factory=BaselineLossConfig, description="Baseline KD settings.")


# ----------------------------------------------------------------------------------- training
class TrainConfig(Strict):
    epochs: int = Field(20, ge=1, description="Passes over the training split.")
    batch_size: int = Field(4, ge=1, description="Frames per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the one-cycle schedule.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    div_factor: float = Field(10.0, gt=0, description="One-cycle initial lr = lr / div_factor.")
    pct_start: float = Field(0.4, gt=0, lt=1, description="Fraction of steps spent warming up.")
    momentum: tuple[float, float] = Field((0.95, 0.85), description="One-cycle beta1 range (max, min).")
    grad_clip: float = Field(35.0, gt=0, description="Gradient-norm clip.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    seed: int = Field(0, description="Random seed (data order, augmentation, init).")
    eval_every: int = Field(0, ge=0, description="Evaluate on val every N epochs (0: only at the end).")
    log_every: int = Field(10, ge=1, description="Steps between log lines.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many steps (smoke runs).")


class EvalConfig(Strict):
    batch_size: int = Field(4, ge=1, description="Frames per inference step.")
    max_frames: Optional[int] = Field(None, ge=1, description="Evaluate only the first N frames of the split.")
    dist_config: Literal["detection_cvpr_2019"] = Field("detection_cvpr_2019", description="nuScenes eval config.")


class ExportConfig(Strict):
    opset: int = Field(17, ge=11, description="ONNX opset.")
    atol: float = Field(1e-3, gt=0, description="Max abs difference allowed between PyTorch and onnxruntime.")
    with_decode: bool = Field(False, description="Include top-K decoding so the graph returns boxes.")


class GatesConfig(Strict):
    """Quality gates of a CI job: a value past its threshold fails the job (exit 1) after everything is written."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    min_map: Optional[float] = Field(None, ge=0, le=1, description=(
        "Fail when the student's mAP (eval: the checkpoint's; Waymo: LEVEL_2 mAP) is below this."))
    min_nds: Optional[float] = Field(None, ge=0, le=1, description="nuScenes: fail when the NDS is below this.")
    min_maph: Optional[float] = Field(None, ge=0, le=1, description=(
        "Waymo (`itkd eval --dataset waymo`): fail when the LEVEL_2 mAPH, the official metric, is below this."))
    max_drop: Optional[float] = Field(None, ge=0, le=1, description=(
        "compress: fail when teacher mAP - student mAP (absolute, e.g. 0.03) is above this."))
    min_speedup: Optional[float] = Field(None, gt=0, description=(
        "compress: fail when teacher / student latency (median CPU PyTorch eager forward on the first val "
        "frame, the report's latency row) is below this, e.g. 4."))
    max_params: Optional[int] = Field(None, ge=1, description="Fail when the student (eval: the checkpoint) has more parameters.")


class Recipe(Strict):
    description: str = Field("", description="One line shown by `itkd recipe ls`.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig, description="Where frames come from.")
    model: ModelConfig = Field(..., description="Teacher architecture (the student derives from it).")
    student: StudentConfig = Field(default_factory=StudentConfig, description="Student derivation.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Distillation method and weights.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation and schedule.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="ONNX export.")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="Quality gates checked by `itkd compress`.")

    @model_validator(mode="after")
    def _pool_threshold(self) -> "Recipe":
        pool = self.dataset.unlabeled
        if pool is not None and pool.score_threshold < self.model.post.score_threshold:
            raise ValueError(f"dataset.unlabeled.score_threshold: {pool.score_threshold:g} is below "
                             f"model.post.score_threshold {self.model.post.score_threshold:g}, which drops those "
                             "teacher boxes first; raise it or lower model.post.score_threshold")
        return self

    @model_validator(mode="after")
    def _classes_covered(self) -> "Recipe":
        head_classes = [c for task in self.model.head.tasks for c in task]
        unknown = [c for c in head_classes if c not in self.dataset.class_names]
        if unknown:
            raise ValueError(f"model.head.tasks: classes not in dataset.class_names: {unknown}")
        missing = [c for c in self.dataset.class_names if c not in head_classes]
        if missing:
            raise ValueError(f"model.head.tasks: no task head predicts {missing}")
        dup = sorted({c for c in head_classes if head_classes.count(c) > 1})
        if dup:
            raise ValueError(f"model.head.tasks: classes in more than one task: {dup}")
        return self
