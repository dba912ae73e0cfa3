"""The 10 nuScenes detection classes as the synthetic world builds them: sizes, parts, reflectivity.

Sizes are (length along the heading, width, height) in metres, mean and std, close to the nuScenes
training-set statistics. Parts are boxes given as fractions of the object box
(x0, x1, y0, y1, z0, z1) with x, y in [-0.5, 0.5] and z in [0, 1] (0 = ground), so a car has a body
and a narrower cabin and rays pass under its chassis; the annotation is the full box.
"""

from __future__ import annotations

from dataclasses import dataclass

# nuScenes attribute names (all 8 are written to attribute.json).
ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
    "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving",
)

VISIBILITY_LEVELS: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)

Part = tuple[float, float, float, float, float, float]
FULL: Part = (-0.5, 0.5, -0.5, 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class ClassSpec:
    """How one detection class looks.

    Attributes:
        category: nuScenes category name (mapped by the devkit to the detection class).
        size_mean: Mean (length, width, height) in metres.
        size_std: Std of (length, width, height).
        parts: Boxes making up the shape, as fractions of the object box.
        reflectivity: Mean LiDAR intensity (0-255) of each part.
        kind: 'vehicle', 'cycle', 'pedestrian' or 'static' (no attribute).
    """

    category: str
    size_mean: tuple[float, float, float]
    size_std: tuple[float, float, float]
    parts: tuple[Part, ...]
    reflectivity: tuple[float, ...]
    kind: str


CLASSES: dict[str, ClassSpec] = {
    "car": ClassSpec("vehicle.car", (4.63, 1.96, 1.74), (0.35, 0.12, 0.15),
                     ((-0.5, 0.5, -0.5, 0.5, 0.12, 0.6), (-0.3, 0.25, -0.46, 0.46, 0.6, 1.0)), (60.0, 12.0), "vehicle"),
    "truck": ClassSpec("vehicle.truck", (6.9, 2.5, 2.9), (1.4, 0.2, 0.45),
                       ((0.22, 0.5, -0.5, 0.5, 0.1, 0.78), (-0.5, 0.2, -0.5, 0.5, 0.1, 1.0)), (45.0, 70.0), "vehicle"),
    "construction_vehicle": ClassSpec(
        "vehicle.construction", (6.4, 2.8, 3.2), (1.0, 0.25, 0.4),
        ((-0.5, 0.1, -0.5, 0.5, 0.1, 0.55), (0.1, 0.5, -0.45, 0.45, 0.1, 1.0)), (90.0, 40.0), "vehicle"),
    "bus": ClassSpec("vehicle.bus.rigid", (11.0, 2.95, 3.45), (1.0, 0.08, 0.15),
                     ((-0.5, 0.5, -0.5, 0.5, 0.08, 1.0),), (50.0,), "vehicle"),
    "trailer": ClassSpec("vehicle.trailer", (12.0, 2.9, 3.8), (1.8, 0.1, 0.3),
                         ((-0.5, 0.5, -0.5, 0.5, 0.3, 1.0),), (40.0,), "vehicle"),
    "barrier": ClassSpec("movable_object.barrier", (0.5, 2.5, 1.0), (0.05, 0.15, 0.05),
                         (FULL,), (110.0,), "static"),
    "motorcycle": ClassSpec("vehicle.motorcycle", (2.1, 0.8, 1.5), (0.15, 0.06, 0.08),
                            ((-0.5, 0.5, -0.25, 0.25, 0.05, 0.55), (-0.25, 0.15, -0.5, 0.5, 0.45, 1.0)),
                            (70.0, 25.0), "cycle"),
    "bicycle": ClassSpec("vehicle.bicycle", (1.75, 0.6, 1.3), (0.1, 0.05, 0.08),
                         ((-0.5, 0.5, -0.25, 0.25, 0.05, 0.55), (-0.25, 0.15, -0.5, 0.5, 0.45, 1.0)),
                         (35.0, 25.0), "cycle"),
    "pedestrian": ClassSpec("human.pedestrian.adult", (0.73, 0.67, 1.76), (0.1, 0.08, 0.1),
                            ((-0.25, 0.25, -0.3, 0.3, 0.0, 0.5), (-0.35, 0.35, -0.5, 0.5, 0.5, 0.87),
                             (-0.2, 0.2, -0.2, 0.2, 0.87, 1.0)), (20.0, 25.0, 10.0), "pedestrian"),
    "traffic_cone": ClassSpec("movable_object.trafficcone", (0.41, 0.41, 1.05), (0.04, 0.04, 0.08),
                              ((-0.5, 0.5, -0.5, 0.5, 0.0, 0.12), (-0.25, 0.25, -0.25, 0.25, 0.12, 1.0)),
                              (60.0, 150.0), "static"),
}

# Cycles parked without a rider are lower and have a single part.
RIDERLESS_HEIGHT = {"motorcycle": 1.15, "bicycle": 1.05}
RIDERLESS_PARTS: tuple[Part, ...] = ((-0.5, 0.5, -0.5, 0.5, 0.05, 1.0),)

# Static scenery: mean intensity per surface.
SURFACE_REFLECTIVITY = {"road": 8.0, "marking": 90.0, "sidewalk": 22.0, "grass": 5.0,
                        "building": 35.0, "pole": 120.0, "trunk": 15.0, "crown": 6.0}
