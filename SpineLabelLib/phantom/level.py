"""One level's shape in its own frame (end plates, fractures, analytic heights) and per-region sizes
of its posterior elements and of the body outline around it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core import anatomy


@dataclass
class _Level:
    """Shape parameters of one level and, once placed, its frame (columns right, anterior, superior)."""

    name: str
    height: float                      # expected (posterior) body height, mm
    depth: float
    width: float
    disc: float                        # disc below, mm
    scale: float = 1.0                 # size factor applied to posterior elements
    fracture: tuple[str, float] | None = None
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def body_height(self) -> float:
        """Height of the body proper (C2: without the dens)."""
        return self.height - 8.0 if self.name == "C2" else self.height

    @property
    def has_body(self) -> bool:
        return self.name != "C1"

    def _fraction(self) -> float:
        return self.fracture[1] / 100.0 if self.fracture else 0.0

    def _half(self) -> float:
        h = self.body_height
        if self.fracture and self.fracture[0] == "crush":
            h *= 1.0 - self._fraction()
        return h / 2.0

    def _dish(self, x, y):
        """Central end-plate depression of a biconcave fracture (per end plate), 0 at y = +-0.4 D."""
        if not (self.fracture and self.fracture[0] == "biconcave"):
            return 0.0
        shape = 1.0 - (y / (0.4 * self.depth)) ** 2 - (x / (0.4 * self.width)) ** 2
        return self._fraction() * self.body_height / 2.0 * np.maximum(shape, 0.0)

    def top(self, x, y):
        """Superior end plate z(x, y) in the local frame."""
        z = self._half() - self._dish(x, y)
        if self.fracture and self.fracture[0] == "wedge":
            slope = self._fraction() * self.body_height / (0.8 * self.depth)
            z = z - slope * np.maximum(y + 0.4 * self.depth, 0.0)
        return z

    def bottom(self, x, y):
        return -self._half() + self._dish(x, y)

    def wedge_angle(self) -> float:
        if not (self.fracture and self.fracture[0] == "wedge"):
            return 0.0
        return math.atan(self._fraction() * self.body_height / (0.8 * self.depth))

    def stack_top(self) -> float:
        return float(self.top(0.0, 0.0)) if self.has_body else self.height / 2.0

    def stack_bottom(self) -> float:
        return float(self.bottom(0.0, 0.0)) if self.has_body else -self.height / 2.0

    def to_world(self, local) -> np.ndarray:
        return self.origin + self.axes @ np.asarray(local, dtype=float)

    def analytic_heights(self) -> tuple[float | None, float | None, float | None]:
        """Body heights at 10 %, 50 %, 90 % of the depth from the anterior edge (mid-sagittal)."""
        if not self.has_body:
            return None, None, None
        heights = [float(self.top(0.0, y) - self.bottom(0.0, y)) for y in (0.4 * self.depth, 0.0, -0.4 * self.depth)]
        if self.name == "C2":       # the middle column runs on through the dens to its tip
            dy = DENS_Y * self.depth
            heights[1] = float(self.top(0.0, 0.0) + DENS_LENGTH + math.sqrt(DENS_RADIUS ** 2 - dy ** 2)
                               - self.bottom(0.0, 0.0))
        return tuple(heights)


DENS_Y, DENS_LENGTH, DENS_RADIUS = -0.05, 10.0, 4.5   # dens axis at y = DENS_Y * depth


def _posterior_params(level: _Level) -> dict[str, float]:
    """Rough sizes of canal and posterior elements per region (mm)."""
    region = anatomy.region(level.name)
    if region == "cervical":
        p = dict(canal_depth=14, canal_width=24, pedicle=2.8, lamina=2.5, spine_length=18, spine_drop=4,
                 spine_radius=3.5, transverse=12)
        if level.name in ("C2", "C7"):
            p["spine_length"] = 25 if level.name == "C2" else 35
    elif region == "thoracic":
        p = dict(canal_depth=15, canal_width=17, pedicle=3.8, lamina=3.5, spine_length=32, spine_drop=22,
                 spine_radius=3.5, transverse=26)
    elif region == "lumbar":
        p = dict(canal_depth=17, canal_width=22, pedicle=5.0, lamina=4.0, spine_length=30, spine_drop=6,
                 spine_radius=5.0, transverse=30)
    else:
        p = dict(canal_depth=10, canal_width=20, pedicle=5.0, lamina=4.0, spine_length=12, spine_drop=8,
                 spine_radius=4.0, transverse=0)
    return {k: v * level.scale for k, v in p.items()}


# Body outline per region: width, AP diameter, distance body centre -> posterior skin, fat layer (mm),
# lung and airway presence (0..1).
def _outline_params(name: str) -> tuple[float, ...]:
    region = anatomy.region(name)
    airway = 1.0 if name in ("C2", "C3", "C4", "C5", "C6", "C7", "T1", "T2", "T3", "T4") else 0.0
    if region == "cervical":
        return 120.0, 120.0, 75.0, 6.0, 0.0, airway
    if region == "thoracic":
        index = anatomy.order_index(name) - anatomy.order_index("T1")
        lung = 0.6 if index in (0, 11, 12) else 1.0
        return 320.0, 220.0, 70.0, 12.0, lung, airway
    if region == "lumbar":
        return 320.0, 230.0, 80.0, 18.0, 0.0, 0.0
    return 340.0, 220.0, 75.0, 18.0, 0.0, 0.0
