"""Embedded synthetic LiDAR world written in the official nuScenes format (`itkd data synth`)."""

from itkd_cli.data.synth.generate import MARKER, TRAIN_SPLIT, VAL_SPLIT, generate
from itkd_cli.data.synth.presets import PRESETS, Preset, get_preset
from itkd_cli.data.synth.writer import VERSION

__all__ = ["generate", "PRESETS", "Preset", "get_preset", "VERSION", "MARKER", "TRAIN_SPLIT", "VAL_SPLIT"]
