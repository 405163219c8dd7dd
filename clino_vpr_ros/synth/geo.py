"""Town metres <-> UTM <-> WGS84, so synthetic datasets carry coordinates in the formats users have.

Towns are placed in UTM zone 33T (north-east Italy / Slovenia); town ``seed`` gets its own origin 3 km
apart along the easting, so cities never overlap. Transverse Mercator series (Snyder, USGS PP 1395),
accurate to millimetres inside the zone.
"""

from __future__ import annotations

import math

import numpy as np

UTM_ZONE = 33
UTM_LETTER = "T"
ORIGIN_EAST = 400_000.0
ORIGIN_NORTH = 5_040_000.0
TOWN_SPACING_M = 3_000.0

_A = 6378137.0
_F = 1 / 298.257223563
_E2 = _F * (2 - _F)
_EP2 = _E2 / (1 - _E2)
_K0 = 0.9996


def town_to_utm(town_seed: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Town metres (x east, y north) -> UTM (easting, northing) metres, zone 33T."""
    east0 = ORIGIN_EAST + (int(town_seed) % 60) * TOWN_SPACING_M
    return east0 + np.asarray(x, np.float64), ORIGIN_NORTH + np.asarray(y, np.float64)


def utm_to_town(town_seed: int, east: np.ndarray, north: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`town_to_utm`."""
    east0 = ORIGIN_EAST + (int(town_seed) % 60) * TOWN_SPACING_M
    return np.asarray(east, np.float64) - east0, np.asarray(north, np.float64) - ORIGIN_NORTH


def _lon0(zone: int) -> float:
    return math.radians(zone * 6 - 183)


def utm_to_latlon(east: np.ndarray, north: np.ndarray, zone: int = UTM_ZONE) -> tuple[np.ndarray, np.ndarray]:
    """UTM (northern hemisphere) -> (lat, lon) degrees."""
    x = np.asarray(east, np.float64) - 500_000.0
    m = np.asarray(north, np.float64) / _K0
    mu = m / (_A * (1 - _E2 / 4 - 3 * _E2**2 / 64 - 5 * _E2**3 / 256))
    e1 = (1 - math.sqrt(1 - _E2)) / (1 + math.sqrt(1 - _E2))
    phi1 = (mu + (3 * e1 / 2 - 27 * e1**3 / 32) * np.sin(2 * mu) + (21 * e1**2 / 16 - 55 * e1**4 / 32) * np.sin(4 * mu)
            + (151 * e1**3 / 96) * np.sin(6 * mu) + (1097 * e1**4 / 512) * np.sin(8 * mu))
    s, c, t = np.sin(phi1), np.cos(phi1), np.tan(phi1)
    n1 = _A / np.sqrt(1 - _E2 * s**2)
    t1, c1 = t**2, _EP2 * c**2
    r1 = _A * (1 - _E2) / (1 - _E2 * s**2) ** 1.5
    d = x / (n1 * _K0)
    lat = phi1 - (n1 * t / r1) * (d**2 / 2 - (5 + 3 * t1 + 10 * c1 - 4 * c1**2 - 9 * _EP2) * d**4 / 24
                                  + (61 + 90 * t1 + 298 * c1 + 45 * t1**2 - 252 * _EP2 - 3 * c1**2) * d**6 / 720)
    lon = _lon0(zone) + (d - (1 + 2 * t1 + c1) * d**3 / 6
                         + (5 - 2 * c1 + 28 * t1 - 3 * c1**2 + 8 * _EP2 + 24 * t1**2) * d**5 / 120) / c
    return np.degrees(lat), np.degrees(lon)


def latlon_to_utm(lat: np.ndarray, lon: np.ndarray, zone: int = UTM_ZONE) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) degrees -> UTM (easting, northing) in the given zone (northern hemisphere)."""
    phi = np.radians(np.asarray(lat, np.float64))
    lam = np.radians(np.asarray(lon, np.float64))
    s, c, t = np.sin(phi), np.cos(phi), np.tan(phi)
    n = _A / np.sqrt(1 - _E2 * s**2)
    tt, cc = t**2, _EP2 * c**2
    a = c * (lam - _lon0(zone))
    m = _A * ((1 - _E2 / 4 - 3 * _E2**2 / 64 - 5 * _E2**3 / 256) * phi
              - (3 * _E2 / 8 + 3 * _E2**2 / 32 + 45 * _E2**3 / 1024) * np.sin(2 * phi)
              + (15 * _E2**2 / 256 + 45 * _E2**3 / 1024) * np.sin(4 * phi) - (35 * _E2**3 / 3072) * np.sin(6 * phi))
    east = _K0 * n * (a + (1 - tt + cc) * a**3 / 6 + (5 - 18 * tt + tt**2 + 72 * cc - 58 * _EP2) * a**5 / 120) + 500_000.0
    north = _K0 * (m + n * t * (a**2 / 2 + (5 - tt + 9 * cc + 4 * cc**2) * a**4 / 24
                                + (61 - 58 * tt + tt**2 + 600 * cc - 330 * _EP2) * a**6 / 720))
    return east, north
