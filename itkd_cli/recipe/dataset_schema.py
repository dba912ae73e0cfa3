"""Recipe schema, the dataset section (`dataset:`): where frames come from and how they are augmented.

Also the base of every section (``Strict``). ``recipe.schema`` re-exports these names.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

NUSCENES_CLASSES: tuple[str, ...] = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)


class Strict(BaseModel):
    """Base: unknown keys are errors; values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------- data
class AugmentConfig(Strict):
    rotation: tuple[float, float] = Field((-0.785398, 0.785398), description="Global yaw rotation range (rad).")
    scale: tuple[float, float] = Field((0.95, 1.05), description="Global scaling range.")
    flip_x: bool = Field(True, description="Random flip across the x axis (y -> -y).")
    flip_y: bool = Field(True, description="Random flip across the y axis (x -> -x).")
    translate_std: float = Field(0.0, ge=0, description="Std (m) of a global translation noise.")
    gt_sampling: bool = Field(False, description="Paste objects from the ground-truth database.")
    gt_sampling_per_class: int = Field(2, ge=0, description="Max objects pasted per class and frame.")


class SampledIntervalConfig(Strict):
    train: int = Field(1, ge=1, description="Every N-th frame of dataset.train_split is trained on.")
    val: int = Field(1, ge=1, description="Every N-th frame of dataset.val_split is evaluated.")


class UnlabeledConfig(Strict):
    """Frames nobody annotated, which `itkd compress` mixes into every batch: the KD terms learn from them (object
    centres from the teacher's own confident detections), the detection loss never does."""

    source: Literal["split", "sweeps", "folder"] = Field(..., description=(
        "split: the frames of `split` (a split of the dataset, annotations ignored if any); sweeps: the non-key "
        "LiDAR sweeps between the keyframes of `split`'s scenes (nuScenes; 9 in 10 of its frames); folder: every "
        "point file in `folder` (.pcd.bin as nuScenes writes them, or .npy (N, 5) as a converted Waymo root)."))
    split: Optional[str] = Field(None, description="split / sweeps: the split (sweeps: default dataset.train_split).")
    folder: Optional[str] = Field(None, description="folder: the folder of point files (LiDAR frame, one sweep each).")
    ratio: float = Field(0.5, gt=0, lt=1, description="Share of each training batch taken from the unlabeled pool.")
    score_threshold: float = Field(0.3, ge=0, le=1, description=(
        "Teacher detections scoring above this give the object centres of an unlabeled frame (the head attention "
        "and MSE-at-centres of itKD, SparseKD's labels)."))

    @model_validator(mode="after")
    def _check(self) -> "UnlabeledConfig":
        if self.source == "split" and not self.split:
            raise ValueError("split: required with source 'split'")
        if self.source == "folder" and not self.folder:
            raise ValueError("folder: required with source 'folder'")
        return self


class DatasetConfig(Strict):
    kind: Literal["nuscenes", "waymo"] = Field(
        "nuscenes", description="Dataset format: nuscenes (the 13 tables + .pcd.bin; scored by the devkit) or waymo "
                                "(a root converted from TFRecords by `itkd data prepare --dataset waymo`; scored by the "
                                "official Waymo metrics).")
    root: str = Field("data/synth", description=(
        "Dataset root folder (nuscenes: holds <version>/ tables, samples/, sweeps/; waymo: the converted root)."))
    version: str = Field("v1.0-synth", description="nuScenes version folder, e.g. v1.0-mini, v1.0-trainval (waymo: a label only).")
    train_split: str = Field("train", description="Split for training (built-in devkit name or a key of splits.json; "
                                                  "waymo: a split converted by `itkd data prepare`).")
    val_split: str = Field("val", description="Split for evaluation.")
    sampled_interval: SampledIntervalConfig = Field(default_factory=SampledIntervalConfig, description=(
        "Use every N-th frame of the train / val split (OpenPCDet's SAMPLED_INTERVAL; its Waymo recipes train "
        "on every 5th frame)."))
    sweeps: int = Field(1, ge=1, le=20, description="LiDAR sweeps per frame, the keyframe included.")
    max_sweep_lag: float = Field(0.55, gt=0, description="Oldest sweep allowed (s) before the keyframe.")
    class_names: list[str] = Field(list(NUSCENES_CLASSES), min_length=1, description="Detection classes, in label order.")
    balanced_resampling: bool = Field(False, description=(
        "Class-balanced resampling (CBGS, OpenPCDet's BALANCED_RESAMPLING) of the train split, seeded by train.seed."))
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training-time augmentation.")
    unlabeled: Optional[UnlabeledConfig] = Field(None, description=(
        "A pool of unannotated frames for distillation (`itkd compress`; every method but `none` uses it)."))
    workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    cache_dir: Optional[str] = Field(None, description="Info-cache folder; default <root>/itkd_cache.")
