"""Embedded synthetic LiDAR world written in the official nuScenes format (`itkd data synth`).

The generator pulls in nuscenes-devkit (slow to import); it loads on first use so that `itkd --help`
and preset look-ups stay fast.
"""

from typing import Any

from itkd_cli.data.synth.presets import PRESETS, Preset, get_preset

_LAZY = {"generate": "render", "MARKER": "render", "TRAIN_SPLIT": "render", "VAL_SPLIT": "render",
         "UNLABELED_SPLIT": "render", "VERSION": "writer"}

__all__ = ["generate", "PRESETS", "Preset", "get_preset", "VERSION", "MARKER", "TRAIN_SPLIT", "VAL_SPLIT",
           "UNLABELED_SPLIT"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"itkd_cli.data.synth.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
