"""Procedural street scene in a scene-local frame: road along +x, ego in the second lane.

Cross-section (metres from the road axis, mirrored on the left, right-hand traffic):
lanes at |y| = 1.75 and 5.25 (y < 0 drives towards +x), a cycle strip at 7.5, parking at 9.5
(construction zones live there too), street furniture (poles, trees, parked cycles) at 11.5,
pedestrians walk at 12.6-14.6 and buildings start at 16. Every object moves on a straight line at a
constant velocity; all objects of one lane or strip share its speed, so nothing ever collides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from itkd_cli.data.synth.classes import CLASSES, RIDERLESS_HEIGHT, RIDERLESS_PARTS, Part
from itkd_cli.data.synth.presets import Preset

KEYFRAME_DT = 0.5  # seconds between keyframes (2 Hz, as nuScenes)
LANES = ((-5.25, 1.0), (-1.75, 1.0), (1.75, -1.0), (5.25, -1.0))  # (y, direction)
EGO_LANE = 1
BIKE_Y, PARK_Y, FURNITURE_Y, WALK_Y, BUILDING_Y = 7.5, 9.5, 11.5, (12.6, 14.6), 16.0
NEAR = 20.0  # objects every scene must show lie within this many metres of the route's middle
LANE_MIX = {"car": 0.78, "truck": 0.1, "bus": 0.06, "trailer": 0.03, "construction_vehicle": 0.03}
PARK_MIX = {"car": 0.8, "truck": 0.1, "trailer": 0.07, "bus": 0.03}


@dataclass
class Thing:
    """One rigid thing: a road user, a piece of furniture or a building.

    Attributes:
        cls: Detection class name, or None for scenery (never annotated).
        pos0: Box centre (x, y) in the scene frame at t = 0.
        vel: Velocity (vx, vy) in m/s.
        yaw: Heading (rad) of the length axis.
        size: (length, width, height) in metres; the box stands on the ground.
        parts: Part boxes as fractions of the box (see classes.py).
        reflect: Mean intensity of each part.
        transmit: Probability that a ray passes through each part (foliage).
        attribute: nuScenes attribute name, or None.
    """

    cls: str | None
    pos0: tuple[float, float]
    vel: tuple[float, float]
    yaw: float
    size: tuple[float, float, float]
    parts: tuple[Part, ...]
    reflect: tuple[float, ...]
    transmit: tuple[float, ...]
    attribute: str | None = None
    arrays: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Part bounds as arrays once, so the ray caster tests all parts in one vectorised step.
        parts = np.array(self.parts, dtype=np.float64).reshape(-1, 6)
        self.arrays = {"lo": parts[:, [0, 2, 4]] * self.size, "hi": parts[:, [1, 3, 5]] * self.size,
                       "reflect": np.array(self.reflect), "transmit": np.array(self.transmit)}


@dataclass
class World:
    """A scene: its things, the ego's drive and where the scene sits in the global frame."""

    things: list[Thing]
    ego_speed: float
    heading: float
    origin: tuple[float, float]
    extent: tuple[float, float]

    def ego_xy(self, t: float) -> tuple[float, float]:
        """Ego position in the scene frame at time t (s from the first keyframe)."""
        return (self.ego_speed * t, LANES[EGO_LANE][0])

    def poses(self, t: float) -> np.ndarray:
        """Box centre and yaw of every thing at time t: (T, 4) as x, y, z, yaw in the scene frame."""
        out = np.empty((len(self.things), 4))
        for i, th in enumerate(self.things):
            out[i] = (th.pos0[0] + th.vel[0] * t, th.pos0[1] + th.vel[1] * t, th.size[2] / 2, th.yaw)
        return out


def _size(rng: np.random.Generator, cls: str) -> tuple[float, float, float]:
    """(length, width, height) drawn from the class distribution, kept within 40 % of the mean."""
    spec = CLASSES[cls]
    mean, std = np.array(spec.size_mean), np.array(spec.size_std)
    return tuple(float(v) for v in np.clip(rng.normal(mean, std), 0.6 * mean, 1.4 * mean))


def road_user(rng, cls: str, xy, vel, yaw: float, attribute: str | None, rider: bool = True,
              size: tuple[float, float, float] | None = None) -> Thing:
    """A detection-class object; its size is drawn from the class distribution unless given."""
    spec = CLASSES[cls]
    size, parts, reflect = size or _size(rng, cls), spec.parts, spec.reflectivity
    if spec.kind == "cycle" and not rider:
        size = (size[0], size[1], RIDERLESS_HEIGHT[cls] * float(rng.uniform(0.9, 1.1)))
        parts, reflect = RIDERLESS_PARTS, reflect[:1]
    return Thing(cls, (float(xy[0]), float(xy[1])), (float(vel[0]), float(vel[1])), float(yaw), size, parts,
                 tuple(float(r * rng.uniform(0.8, 1.2)) for r in reflect), (0.0,) * len(parts), attribute)


class Line:
    """Free space along a line (a lane, a strip): places boxes so that they never overlap."""

    def __init__(self) -> None:
        self.taken: list[tuple[float, float]] = []

    def place(self, rng, length: float, lo: float, hi: float, gap: float, tries: int = 25) -> float | None:
        """Return the centre x of a free interval of `length` (+gap) inside [lo, hi], or None."""
        for _ in range(tries):
            if hi - lo <= length:
                return None
            x = float(rng.uniform(lo + length / 2, hi - length / 2))
            a, b = x - length / 2 - gap, x + length / 2 + gap
            if all(b <= s or a >= e for s, e in self.taken):
                self.taken.append((x - length / 2, x + length / 2))
                return x
        return None


def _pick(rng, mix: dict[str, float]) -> str:
    """A class name drawn with the probabilities of `mix`."""
    names = list(mix)
    return names[int(rng.choice(len(names), p=np.array([mix[n] for n in names]) / sum(mix.values())))]


def _vehicle_attr(speed: float, parked: bool) -> str:
    """nuScenes vehicle attribute of a vehicle moving at `speed` (m/s)."""
    return "vehicle.moving" if speed > 0 else ("vehicle.parked" if parked else "vehicle.stopped")


class Builder:
    """Builds one World from a random generator (all randomness flows through `rng`)."""

    def __init__(self, rng: np.random.Generator, preset: Preset, frames: int) -> None:
        self.rng, self.preset = rng, preset
        self.t_mid = (frames - 1) * KEYFRAME_DT / 2
        self.ego_speed = float(rng.uniform(2.0, 10.0))
        route_end = self.ego_speed * (frames - 1) * KEYFRAME_DT
        self.x_mid = route_end / 2
        self.extent = (-preset.max_range - 5, route_end + preset.max_range + 5)
        self.things: list[Thing] = []
        self.lane_speed = [0.0 if rng.random() < 0.2 else float(rng.uniform(4, 13)) for _ in LANES]
        self.lane_speed[EGO_LANE] = self.ego_speed
        self.bike_speed = [float(rng.uniform(2.5, 7.0)) for _ in range(2)]
        # Lines hold positions at t_mid (same speed per line, so no overlap at any time).
        self.lanes = [Line() for _ in LANES]
        self.bikes, self.parks, self.furniture, self.walks = ([Line(), Line()] for _ in range(4))
        ego_x = self.ego_speed * self.t_mid
        self.lanes[EGO_LANE].taken.append((ego_x - 8.0, ego_x + 8.0))

    def _near(self) -> tuple[float, float]:
        return self.x_mid - NEAR, self.x_mid + NEAR

    def lane_vehicle(self, cls: str, lane: int, window: tuple[float, float]) -> bool:
        """Put a vehicle of class `cls` into a lane (at t_mid inside `window`)."""
        y, direction = LANES[lane]
        size = _size(self.rng, cls)
        x = self.lanes[lane].place(self.rng, size[0], *window, gap=float(self.rng.uniform(3, 12)))
        if x is None:
            return False
        v = direction * self.lane_speed[lane]
        self.things.append(road_user(self.rng, cls, (x - v * self.t_mid, y), (v, 0.0),
                                     0.0 if direction > 0 else np.pi, _vehicle_attr(abs(v), parked=False), size=size))
        return True

    def parked_vehicle(self, cls: str, side: int, window: tuple[float, float]) -> bool:
        """Park a vehicle along the curb of side 0 (y < 0) or 1 (y > 0)."""
        size = _size(self.rng, cls)
        x = self.parks[side].place(self.rng, size[0], *window, gap=float(self.rng.uniform(0.8, 4)))
        if x is None:
            return False
        y = PARK_Y * (1 if side else -1)
        yaw = float(self.rng.choice([0.0, np.pi]) + self.rng.normal(0, 0.03))
        self.things.append(road_user(self.rng, cls, (x, y), (0.0, 0.0), yaw, "vehicle.parked", size=size))
        return True

    def cyclist(self, cls: str, side: int, window: tuple[float, float]) -> bool:
        """A ridden cycle in the cycle strip of a side, riding with that side's traffic."""
        x = self.bikes[side].place(self.rng, 2.2, *window, gap=float(self.rng.uniform(2, 15)))
        if x is None:
            return False
        direction = 1.0 if side == 0 else -1.0
        v = direction * self.bike_speed[side]
        y = BIKE_Y * (1 if side else -1)
        self.things.append(road_user(self.rng, cls, (x - v * self.t_mid, y), (v, 0.0),
                                     0.0 if direction > 0 else np.pi, "cycle.with_rider"))
        return True

    def pedestrian(self, side: int, window: tuple[float, float]) -> None:
        """A walking (70 %) or standing pedestrian on a sidewalk."""
        rng = self.rng
        y = float(rng.uniform(*WALK_Y)) * (1 if side else -1)
        x = float(rng.uniform(*window))
        if rng.random() < 0.7:
            v = float(rng.uniform(0.8, 1.8)) * float(rng.choice([-1.0, 1.0]))
            th = road_user(rng, "pedestrian", (x - v * self.t_mid, y), (v, 0.0), 0.0 if v > 0 else np.pi,
                           "pedestrian.moving")
        else:
            th = road_user(rng, "pedestrian", (x, y), (0.0, 0.0), float(rng.uniform(-np.pi, np.pi)),
                           "pedestrian.standing")
        self.things.append(th)

    def parked_cycle(self, cls: str, side: int, window: tuple[float, float]) -> bool:
        """A cycle without rider parked on the furniture line."""
        x = self.furniture[side].place(self.rng, 2.2, *window, gap=0.5)
        if x is None:
            return False
        yaw = float(self.rng.choice([0.0, np.pi]))
        y = FURNITURE_Y * (1 if side else -1)
        self.things.append(road_user(self.rng, cls, (x, y), (0.0, 0.0), yaw, "cycle.without_rider", rider=False))
        return True

    def construction_zone(self) -> None:
        """A work zone in the parking strip: a construction vehicle behind barriers, a cone taper."""
        rng = self.rng
        side = int(rng.integers(2))
        sign = 1 if side else -1
        length = float(rng.uniform(14, 24))
        x0 = self.x_mid + float(rng.uniform(-12, 2))  # cones and barriers within 30 m (eval range)
        self.parks[side].taken.append((x0 - 9.0, x0 + length))
        size = _size(rng, "construction_vehicle")
        size = (min(size[0], length - 3), min(size[1], 2.6), size[2])
        self.things.append(road_user(rng, "construction_vehicle", (x0 + length / 2, sign * PARK_Y), (0.0, 0.0),
                                     float(rng.choice([0.0, np.pi])), "vehicle.parked", size=size))
        for x in np.arange(x0 + 1.35, x0 + length, 2.7):
            self.things.append(road_user(rng, "barrier", (x, sign * 8.3), (0.0, 0.0), sign * np.pi / 2, None))
        for k, x in enumerate(np.linspace(x0 - 8.0, x0 - 1.0, int(rng.integers(4, 7)))):
            frac = k / 5.0
            y = sign * (10.6 - 2.3 * min(frac, 1.0))
            yaw = float(rng.uniform(-np.pi, np.pi))
            self.things.append(road_user(rng, "traffic_cone", (x, y), (0.0, 0.0), yaw, None))
