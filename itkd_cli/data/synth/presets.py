"""Named sizes of the synthetic world: how many scenes, how fine the LiDAR, how many sweeps.

| preset  | scenes x keyframes | val scenes | sweeps between keyframes | azimuth step | use |
|---------|--------------------|------------|--------------------------|--------------|-----|
| small   | 2 x 3              | 1          | 1 (4 Hz)                 | 0.6 deg      | unit tests (about a second) |
| default | 12 x 20            | 2          | 2 (6 Hz)                 | 0.4 deg      | demo, training, benchmarks |

Both use a 32-beam sensor with nuScenes HDL-32E vertical angles (-30.67 .. +10.67 deg), 70 m range
and keyframes at 2 Hz; objects are annotated up to `annotation_range` metres from the ego, because
the embedded default detector covers +-40.96 m.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from itkd_cli.core.errors import ItkdError


@dataclass(frozen=True)
class Preset:
    """Parameters of one synthetic dataset.

    Attributes:
        name: Preset name.
        scenes: Number of scenes (each its own log and road).
        frames: Keyframes (samples) per scene, 0.5 s apart.
        val_scenes: How many of the last scenes form the validation split.
        sweeps_between: Non-key LiDAR sweeps between two keyframes (and before the first one).
        azimuth_step_deg: Horizontal angle between two firings of a beam.
        beams: Number of laser beams (rings).
        elevation_deg: Lowest and highest beam elevation (deg), spaced evenly.
        max_range: Farthest return (m).
        range_noise: Std of the range noise (m).
        dropout: Probability that a return is lost at random.
        annotation_range: Objects farther than this from the ego (m, in x-y) are not annotated.
        object_density: Multiplier on the number of road users and street furniture.
    """

    name: str
    scenes: int
    frames: int
    val_scenes: int
    sweeps_between: int
    azimuth_step_deg: float
    beams: int = 32
    elevation_deg: tuple[float, float] = (-30.67, 10.67)
    max_range: float = 70.0
    range_noise: float = 0.02
    dropout: float = 0.05
    annotation_range: float = 40.0
    object_density: float = 1.0

    def as_dict(self) -> dict:
        """Plain dict of the parameters (for summaries and the reuse marker)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "small": Preset(name="small", scenes=2, frames=3, val_scenes=1, sweeps_between=1, azimuth_step_deg=0.6),
    "default": Preset(name="default", scenes=12, frames=20, val_scenes=2, sweeps_between=2, azimuth_step_deg=0.4),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Raises:
        ItkdError: unknown preset name.
    """
    if name not in PRESETS:
        raise ItkdError(f"--preset: unknown preset '{name}'", hint=f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
