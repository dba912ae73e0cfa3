"""Fill a scene: the objects every scene must show, random traffic, street furniture, buildings."""

from __future__ import annotations

import numpy as np

from itkd_cli.data.synth.classes import SURFACE_REFLECTIVITY
from itkd_cli.data.synth.presets import Preset
from itkd_cli.data.synth.world import (
    BUILDING_Y, EGO_LANE, FURNITURE_Y, LANE_MIX, LANES, PARK_MIX, Builder, Thing, World, _pick,
)

GLOBAL_ORIGIN_RANGE = (300.0, 2000.0)  # scene origins in the global frame, metres (like nuScenes maps)


def _must_have(b: Builder) -> None:
    """Every class at least once near the route's middle, so every split can score all 10 classes."""
    rng, near = b.rng, b._near()
    b.construction_zone()
    other_lanes = [i for i in range(len(LANES)) if i != EGO_LANE]
    for cls in ("bus", "truck", "car"):
        for lane in rng.permutation(other_lanes):
            if b.lane_vehicle(cls, int(lane), near):
                break
    for side in rng.permutation(2):
        if b.parked_vehicle("trailer", int(side), near):
            break
    for cls in ("motorcycle", "bicycle"):  # small and often hidden behind traffic: one per side
        for side in range(2):
            b.cyclist(cls, side, near)
    for side in range(2):
        b.pedestrian(side, near)


def _traffic(b: Builder) -> None:
    """Random traffic over the whole extent, scaled by the preset's object density."""
    rng, lo, hi = b.rng, *b.extent
    length = hi - lo
    density = b.preset.object_density
    for lane in range(len(LANES)):
        for _ in range(int(length / 25 * density)):
            b.lane_vehicle(_pick(rng, LANE_MIX), lane, b.extent)
    for side in range(2):
        for _ in range(int(length / 14 * density)):
            b.parked_vehicle(_pick(rng, PARK_MIX), side, b.extent)
        for _ in range(int(length / 60 * density)):
            b.cyclist(str(rng.choice(["motorcycle", "bicycle"])), side, b.extent)
        for _ in range(int(length / 9 * density)):
            b.pedestrian(side, b.extent)


def _furniture(b: Builder) -> None:
    """Poles, trees and parked cycles on the furniture line; a few stray cones on the curb."""
    rng, (lo, hi) = b.rng, b.extent
    for side in range(2):
        sign = 1 if side else -1
        for _ in range(int((hi - lo) / 12 * b.preset.object_density)):
            kind = rng.random()
            if kind < 0.25:
                b.parked_cycle(str(rng.choice(["motorcycle", "bicycle"])), side, b.extent)
                continue
            x = b.furniture[side].place(rng, 1.0, lo, hi, gap=3.0)
            if x is None:
                continue
            b.things.append(_pole(rng, x, sign * FURNITURE_Y) if kind < 0.55 else _tree(rng, x, sign * FURNITURE_Y))


def _pole(rng, x: float, y: float) -> Thing:
    """A metal pole (street light, sign): thin, tall, bright."""
    h = float(rng.uniform(4.5, 8.0))
    return Thing(None, (x, y), (0.0, 0.0), 0.0, (0.25, 0.25, h), ((-0.5, 0.5, -0.5, 0.5, 0.0, 1.0),),
                 (SURFACE_REFLECTIVITY["pole"],), (0.0,))


def _tree(rng, x: float, y: float) -> Thing:
    """A tree: a thin trunk under a crown that lets about a third of the rays through."""
    crown, h = float(rng.uniform(2.2, 3.2)), float(rng.uniform(5.5, 8.0))
    trunk = 0.35 / crown / 2
    return Thing(None, (x, y), (0.0, 0.0), float(rng.uniform(0, np.pi)), (crown, crown, h),
                 ((-trunk, trunk, -trunk, trunk, 0.0, 0.55), (-0.5, 0.5, -0.5, 0.5, 0.5, 1.0)),
                 (SURFACE_REFLECTIVITY["trunk"], SURFACE_REFLECTIVITY["crown"]), (0.0, 0.35))


def _buildings(b: Builder) -> None:
    """Rows of buildings with alleys between them, set back from the sidewalk."""
    rng, (lo, hi) = b.rng, b.extent
    for sign in (-1, 1):
        x = lo
        while x < hi:
            length, depth = float(rng.uniform(8, 30)), float(rng.uniform(8, 16))
            y = sign * (BUILDING_Y + float(rng.uniform(0, 3)) + depth / 2)
            b.things.append(Thing(None, (x + length / 2, y), (0.0, 0.0), 0.0,
                                  (length, depth, float(rng.uniform(4, 16))), ((-0.5, 0.5, -0.5, 0.5, 0.0, 1.0),),
                                  (SURFACE_REFLECTIVITY["building"] * float(rng.uniform(0.6, 1.5)),), (0.0,)))
            x += length + (float(rng.uniform(2, 10)) if rng.random() < 0.5 else 0.3)


def build_world(rng: np.random.Generator, preset: Preset, frames: int) -> World:
    """Lay out one scene.

    Args:
        rng: The scene's own generator.
        preset: Dataset parameters (ranges, density).
        frames: Keyframes of the scene (sets the route length).

    Returns:
        The World, with its place in the global frame drawn too.
    """
    b = Builder(rng, preset, frames)
    _must_have(b)
    _traffic(b)
    _furniture(b)
    _buildings(b)
    origin = tuple(float(v) for v in rng.uniform(*GLOBAL_ORIGIN_RANGE, size=2))
    return World(b.things, b.ego_speed, float(rng.uniform(-np.pi, np.pi)), origin, b.extent)
