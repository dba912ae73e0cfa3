"""A 32-beam spinning LiDAR ray-cast with numpy: ground plane + boxes, first hit wins.

Rays form a (beams, azimuths) grid fixed in the sensor frame. Each thing is only tested against the
rays of its angular window (azimuth span of its corners, elevation span from its nearest and
farthest footprint distance), which keeps a scan at a few tens of milliseconds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from itkd_cli.data.synth.classes import SURFACE_REFLECTIVITY
from itkd_cli.data.synth.presets import Preset
from itkd_cli.data.synth.world import LANES, Thing

ELEVATION_MARGIN = np.deg2rad(1.5)  # covers the sensor's small tilt against the level frame
_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
MIN_RANGE = 1.0  # returns closer than this are the ego's own body: dropped, as nuScenes does


class Scan(NamedTuple):
    """One LiDAR sweep.

    points: (N, 5) float32 x, y, z, intensity, ring in the SENSOR frame.
    visibility: (T,) fraction of each thing's unoccluded returns that survived occlusion (nan if unseen).
    """

    points: np.ndarray
    visibility: np.ndarray


class RangeImage(NamedTuple):
    """One sweep as the sensor's (beams, azimuths) grid, beams in ascending elevation.

    range: (B, A) float64 measured distance (m), -1 where there is no return (Waymo's convention).
    intensity: (B, A) float64, 0 where there is no return.
    visibility: as in Scan.
    """

    range: np.ndarray
    intensity: np.ndarray
    visibility: np.ndarray


class Lidar:
    """The sensor's ray grid and noise model for one preset.

    Args:
        preset: beams, elevation span, azimuth step, range and noise.
        azimuth_offset: azimuth (rad) of the first column; column k looks at offset + k * step.
    """

    def __init__(self, preset: Preset, azimuth_offset: float = 0.0) -> None:
        self.p = preset
        self.elev = np.deg2rad(np.linspace(*preset.elevation_deg, preset.beams))
        self.step = np.deg2rad(preset.azimuth_step_deg)
        self.offset = azimuth_offset
        self.azim = np.arange(int(round(2 * np.pi / self.step))) * self.step + azimuth_offset
        ce, se = np.cos(self.elev)[:, None], np.sin(self.elev)[:, None]
        self.dirs = np.stack(np.broadcast_arrays(ce * np.cos(self.azim), ce * np.sin(self.azim), se), -1)

    def scan(self, things: list[Thing], poses: np.ndarray, rot: np.ndarray, origin: np.ndarray,
             rng: np.random.Generator) -> Scan:
        """Render one sweep.

        Args:
            things: Everything in the scene.
            poses: (T, 4) x, y, z, yaw of each thing in the scene frame at the sweep time.
            rot: (3, 3) sensor-to-scene rotation.
            origin: (3,) sensor position in the scene frame.
            rng: Generator for noise, dropout and foliage transmission.

        Returns:
            The points in the sensor frame and per-thing visibility.
        """
        depth, refl, visibility = self._hits(things, poses, rot, origin, rng)
        return Scan(self._returns(depth, refl, rng), visibility)

    def image(self, things: list[Thing], poses: np.ndarray, rot: np.ndarray, origin: np.ndarray,
              rng: np.random.Generator) -> RangeImage:
        """Render one sweep as a range image (same arguments and randomness as ``scan``)."""
        depth, refl, visibility = self._hits(things, poses, rot, origin, rng)
        measured, intensity, keep = self._measure(depth, refl, rng)
        return RangeImage(np.where(keep, measured, -1.0), np.where(keep, intensity, 0.0), visibility)

    def _hits(self, things, poses, rot, origin, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise-free distance and reflectivity of the first hit of every ray, (B, A) each; visibility (T,)."""
        dirs = (self.dirs @ rot.T).reshape(-1, 3)  # (B * A, 3) in the scene frame
        ground, refl = self._ground(dirs, origin)
        rays, tid = self._pairs(things, poses, rot, origin, ground)
        # float32 is plenty for distances under 100 m and halves the memory traffic of the slab test.
        t, r = _cast_grouped(_part_table(things), poses, tid, dirs[rays].astype(np.float32), origin, rng)
        unoccluded = np.bincount(tid, weights=np.isfinite(t), minlength=len(things))
        # First hit wins: per ray, the nearest thing if it is nearer than the ground.
        order = np.lexsort((t, rays))
        first = order[np.r_[True, rays[order][1:] != rays[order][:-1]]] if len(order) else order
        first = first[t[first] < ground[rays[first]]]
        depth = ground.copy()
        owner = np.full(depth.shape, -1, dtype=np.int64)
        depth[rays[first]], refl[rays[first]], owner[rays[first]] = t[first], r[first], tid[first]
        seen = np.bincount(owner[owner >= 0], minlength=len(things))
        with np.errstate(invalid="ignore", divide="ignore"):
            visibility = np.where(unoccluded > 0, seen / unoccluded, np.nan)
        shape = self.dirs.shape[:2]
        return depth.reshape(shape), refl.reshape(shape), visibility

    def _ground(self, dirs: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hits on the flat ground z = 0, with intensity by surface (road, markings, sidewalk, grass)."""
        dz = dirs[:, 2]
        with np.errstate(divide="ignore"):
            t = np.where(dz < -1e-6, -origin[2] / np.minimum(dz, -1e-6), np.inf)
        tt = np.where(np.isfinite(t), t, 0.0)
        x, y = origin[0] + tt * dirs[:, 0], np.abs(origin[1] + tt * dirs[:, 1])
        refl = np.select([y < 11.0, y < 16.0], [SURFACE_REFLECTIVITY["road"], SURFACE_REFLECTIVITY["sidewalk"]],
                         SURFACE_REFLECTIVITY["grass"])
        dashed = (np.abs(y - abs(LANES[0][0] + LANES[1][0]) / 2) < 0.08) & (np.mod(x, 9.0) < 3.0)
        solid = (np.abs(y) < 0.1) | (np.abs(y - 7.0) < 0.08)
        refl = np.where(dashed | solid, SURFACE_REFLECTIVITY["marking"], refl)
        return t, refl.astype(np.float64)

    def _pairs(self, things, poses, rot, origin, ground) -> tuple[np.ndarray, np.ndarray]:
        """(ray index, thing index) of every ray to test: the thing's angular window, minus the rays
        that meet the ground before the thing's nearest point (they can never reach it)."""
        half = np.array([th.size for th in things]) / 2  # (T, 3)
        c, s = np.cos(poses[:, 3]), np.sin(poses[:, 3])
        rx, ry = origin[0] - poses[:, 0], origin[1] - poses[:, 1]
        local = np.stack([c * rx + s * ry, -s * rx + c * ry], 1)
        d_min = np.linalg.norm(np.maximum(np.abs(local) - half[:, :2], 0.0), axis=1)
        corners = _SIGNS[None] * half[:, None, :]  # (T, 8, 3) in each box frame
        world = np.stack([c[:, None] * corners[..., 0] - s[:, None] * corners[..., 1],
                          s[:, None] * corners[..., 0] + c[:, None] * corners[..., 1], corners[..., 2]], -1)
        world += poses[:, None, :3] - origin
        sensor = world @ rot  # rows: rot.T @ v
        az = np.arctan2(sensor[..., 1], sensor[..., 0])
        centre = np.arctan2(sensor[..., 1].mean(1), sensor[..., 0].mean(1))
        da = np.angle(np.exp(1j * (az - centre[:, None])))
        a0 = np.floor((centre + da.min(1) - self.offset) / self.step).astype(int)
        a1 = np.ceil((centre + da.max(1) - self.offset) / self.step).astype(int)
        d_max = np.linalg.norm(world[..., :2], axis=2).max(1)
        top, bottom = poses[:, 2] + half[:, 2] - origin[2], poses[:, 2] - half[:, 2] - origin[2]
        e_hi = np.arctan2(top, np.where(top > 0, d_min, d_max)) + ELEVATION_MARGIN
        e_lo = np.arctan2(bottom, np.where(bottom < 0, d_min, d_max)) - ELEVATION_MARGIN
        b0, b1 = np.searchsorted(self.elev, e_lo), np.searchsorted(self.elev, e_hi, side="right")
        n_az = len(self.azim)
        rays, tid = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for i in np.flatnonzero((d_min <= self.p.max_range) & (d_min > 0) & (b1 > b0)):
            cols = np.arange(a0[i], a1[i] + 1) % n_az
            idx = (np.arange(b0[i], b1[i])[:, None] * n_az + cols).ravel()
            idx = idx[ground[idx] > d_min[i]]
            rays.append(idx)
            tid.append(np.full(len(idx), i, dtype=np.int64))
        return np.concatenate(rays), np.concatenate(tid)

    def _measure(self, depth: np.ndarray, refl: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noise, dropout and intensity of every ray: (measured range, intensity 0-255, kept), (B, A) each."""
        p = self.p
        rel = np.clip(np.where(np.isfinite(depth), depth, 0.0) / p.max_range, 0.0, 1.0)
        noise = rng.normal(0.0, p.range_noise, depth.shape)
        drop = rng.random(depth.shape) < p.dropout + 0.15 * rel**2  # weak far returns get lost more
        keep = np.isfinite(depth) & (depth >= MIN_RANGE) & (depth <= p.max_range) & ~drop
        intensity = refl * (1.0 - 0.4 * rel) * rng.lognormal(0.0, 0.2, depth.shape)
        return depth + noise, np.clip(intensity, 0.0, 255.0), keep

    def _returns(self, depth: np.ndarray, refl: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, 5) float32 points x, y, z, intensity, ring in the sensor frame."""
        measured, intensity, keep = self._measure(depth, refl, rng)
        ring = np.broadcast_to(np.arange(len(self.elev), dtype=np.float64)[:, None], depth.shape)
        xyz = self.dirs[keep] * measured[keep][:, None]
        pts = np.column_stack([xyz, intensity[keep], ring[keep]])
        return pts.astype(np.float32)


def _part_table(things: list[Thing]) -> dict[str, np.ndarray]:
    """Parts of all things padded to the same count: lo/hi (T, P, 3), reflect/transmit (T, P), count (T,)."""
    n = max(len(th.parts) for th in things)
    shape = (len(things), n)
    table = {"lo": np.zeros((*shape, 3), np.float32), "hi": np.zeros((*shape, 3), np.float32),
             "reflect": np.zeros(shape), "transmit": np.zeros(shape),
             "count": np.array([len(th.parts) for th in things]),
             "height": np.array([th.size[2] for th in things], np.float32)}
    for i, th in enumerate(things):
        k = len(th.parts)
        for key in ("lo", "hi", "reflect", "transmit"):
            table[key][i, :k] = th.arrays[key]
    return table


def _cast_grouped(parts: dict[str, np.ndarray], poses: np.ndarray, tid: np.ndarray, dirs: np.ndarray,
                  origin: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`_cast` on groups of things with the same number of parts (no work on padding parts)."""
    t, refl = np.full(len(tid), np.inf), np.zeros(len(tid))
    count = parts["count"][tid]
    for n in np.unique(count):
        sel = np.flatnonzero(count == n)
        sub = {k: (v[:, :n] if v.ndim > 1 else v) for k, v in parts.items()}
        t[sel], refl[sel] = _cast(sub, poses, tid[sel], dirs[sel], origin, rng)
    return t, refl


def _cast(parts: dict[str, np.ndarray], poses: np.ndarray, tid: np.ndarray, dirs: np.ndarray,
          origin: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of n rays against the parts of their things, all at once.

    Args:
        parts: `_part_table` of the scene.
        poses: (T, 4) x, y, z, yaw of every thing.
        tid: (n,) thing tested by each ray.
        dirs: (n, 3) float32 ray directions in the scene frame (all rays start at `origin`).
        origin: (3,) sensor position.
        rng: Generator for foliage transmission.

    Returns:
        t (n,) float32 distance to the nearest part hit (inf if none) and its intensity (n,).
    """
    pose32 = poses.astype(np.float32)
    c, s = np.cos(pose32[tid, 3]), np.sin(pose32[tid, 3])
    o = origin.astype(np.float32) - pose32[tid, :3]
    z_ground = o[:, 2] + parts["height"][tid] / 2  # part heights are measured from the ground
    o_box = np.stack([c * o[:, 0] + s * o[:, 1], -s * o[:, 0] + c * o[:, 1], z_ground], -1)
    d = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], -1)
    inv = np.float32(1.0) / np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)
    lo, hi = parts["lo"][tid], parts["hi"][tid]  # (n, P, 3); z measured from the ground
    t_near, t_far = np.full(lo.shape[:2], -np.inf, np.float32), np.full(lo.shape[:2], np.inf, np.float32)
    for k in range(3):  # per axis on (n, P) arrays: a reduction over a size-3 axis is slow in numpy
        t1 = (lo[..., k] - o_box[:, k, None]) * inv[:, k, None]
        t2 = (hi[..., k] - o_box[:, k, None]) * inv[:, k, None]
        t_near = np.maximum(t_near, np.minimum(t1, t2))
        t_far = np.minimum(t_far, np.maximum(t1, t2))
    hit = (t_far >= t_near) & (t_near > 0)
    transmit = parts["transmit"][tid]
    leafy = np.flatnonzero(transmit.any(1))
    hit[leafy] &= rng.random((len(leafy), transmit.shape[1])) >= transmit[leafy]  # foliage lets rays through
    t = np.where(hit, t_near, np.float32(np.inf))
    best = t.argmin(1)
    rows = np.arange(len(tid))
    return t[rows, best], parts["reflect"][tid, best]
