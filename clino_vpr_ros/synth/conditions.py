"""Appearance conditions: time of day, weather, season and the clutter that changes between visits."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

SEASONS: tuple[str, ...] = ("spring", "summer", "autumn", "winter")


@dataclass(frozen=True)
class Condition:
    """How a place looks on one visit. Buildings never change; everything here does.

    time_of_day: hours in [0, 24); the sun is up between ~6 and ~19, night uses street lighting
      and lit windows.
    fog: 0 (clear) .. 1 (dense); extinction 0.06 /m at 1.
    rain: 0 .. 1; darkens, desaturates, adds streaks.
    season: one of SEASONS; sets canopy size and colour.
    clutter_seed: seeds vehicles, pedestrians and clouds (the clutter that differs between visits).
    cloud_cover: 0 .. 1 fraction of sky covered.
    vehicle_density, pedestrian_density: objects per 100 m of road / sidewalk.
    """

    name: str = "day"
    time_of_day: float = 12.0
    fog: float = 0.0
    rain: float = 0.0
    season: str = "summer"
    clutter_seed: int = 0
    cloud_cover: float = 0.3
    vehicle_density: float = 2.0
    pedestrian_density: float = 3.0

    def __post_init__(self) -> None:
        if self.season not in SEASONS:
            raise ValueError(f"season {self.season!r} unknown; valid: {', '.join(SEASONS)}")
        if not 0.0 <= self.time_of_day < 24.0:
            raise ValueError(f"time_of_day must be in [0, 24) hours, got {self.time_of_day}")
        for field in ("fog", "rain", "cloud_cover"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"{field} must be in [0, 1], got {getattr(self, field)}")
        if self.vehicle_density < 0 or self.pedestrian_density < 0:
            raise ValueError("densities must be >= 0")

    def with_clutter(self, clutter_seed: int) -> "Condition":
        """Same lighting and weather, different vehicles, pedestrians and clouds."""
        return replace(self, clutter_seed=int(clutter_seed))

    @property
    def sun_elevation_deg(self) -> float:
        """Solar elevation of a simple diurnal model (peak 60 deg at 13:00, 0 at 6:00 and 20:00)."""
        return 60.0 * math.sin(math.pi * (self.time_of_day - 6.0) / 14.0)

    @property
    def sun_azimuth_rad(self) -> float:
        """Azimuth from east, counter-clockwise: east at 6:00, south at 13:00, west at 20:00."""
        return -math.pi / 2 - math.pi * (self.time_of_day - 13.0) / 14.0


#: named presets. Clutter seeds differ so two presets never share vehicles or pedestrians.
CONDITIONS: dict[str, Condition] = {
    "day": Condition("day", 12.0, 0.0, 0.0, "summer", 1, 0.3),
    "morning": Condition("morning", 8.5, 0.05, 0.0, "spring", 2, 0.2),
    "dusk": Condition("dusk", 19.2, 0.05, 0.0, "summer", 3, 0.4),
    "night": Condition("night", 22.5, 0.0, 0.0, "summer", 4, 0.1, 1.5, 1.0),
    "overcast_fog": Condition("overcast_fog", 11.0, 0.55, 0.0, "spring", 5, 1.0),
    "autumn_rain": Condition("autumn_rain", 15.0, 0.25, 0.8, "autumn", 6, 0.9, 2.5, 1.5),
    "winter": Condition("winter", 13.0, 0.1, 0.0, "winter", 7, 0.6),
}


def get_condition(name: str) -> Condition:
    """Preset by name; ValueError listing the valid names otherwise."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; valid: {', '.join(CONDITIONS)}")
    return CONDITIONS[name]


def sample_condition(seed: int) -> Condition:
    """A random condition (deterministic from ``seed``): any hour 6-23, weather and season mixed."""
    rng = np.random.default_rng([int(seed), 0xC0D])
    night = rng.uniform() < 0.15
    return Condition(
        name=f"sampled_{seed}",
        time_of_day=float(rng.uniform(20.5, 23.5) if night else rng.uniform(6.5, 19.5)),
        fog=float(rng.uniform(0, 0.6) if rng.uniform() < 0.3 else 0.0),
        rain=float(rng.uniform(0.3, 1.0) if rng.uniform() < 0.25 else 0.0),
        season=SEASONS[int(rng.integers(0, len(SEASONS)))],
        clutter_seed=int(rng.integers(0, 2**31 - 1)),
        cloud_cover=float(rng.uniform(0, 1)),
        vehicle_density=float(rng.uniform(0.5, 3.0)),
        pedestrian_density=float(rng.uniform(0.5, 4.0)),
    )
