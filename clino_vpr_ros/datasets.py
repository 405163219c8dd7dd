"""Readers for the dataset formats VPR users already have (numpy/OpenCV only, no torch).

* GSV-Cities (training): ``Dataframes/<City>.csv`` with columns
  ``place_id, year, month, northdeg, city_id, lat, lon, panoid`` and images at
  ``Images/<City>/<city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg``.
  One training sample is one *place* with ``K`` images of it.
* Downloader format (evaluation): ``images/test/{database,queries}/`` with file names
  ``@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@...@.jpg``; positions come from the names.

Images are read with OpenCV and resized with :func:`clino_vpr_ros.preprocess.to_model_input`, the one
resize policy shared by training, evaluation and the robot runtime.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

GSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# <city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg; the panoid may
# itself contain underscores, so it is whatever follows the longitude.
_GSV_NAME = re.compile(
    r"^(?P<city>.+?)_(?P<place>\d+)_(?P<year>\d+)_(?P<month>\d+)_(?P<north>\d+)_"
    r"(?P<lat>[-+0-9.eE]+)_(?P<lon>[-+0-9.eE]+)_(?P<pano>.+)\.(?:jpe?g|png)$"
)


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; raise FileNotFoundError/ValueError with the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"could not decode image {path} (expected a JPEG or PNG file)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_model_inputs(paths: list[Path], image_size: tuple[int, int] | int, resize: str = "area") -> np.ndarray:
    """Read images and apply the shared resize policy (``resize``: the model's, see ``preprocess``).

    Returns uint8 (len(paths), H, W, 3) RGB, C-contiguous, ready for the encoder.
    """
    from clino_vpr_ros.preprocess import to_model_input

    size = _as_hw(image_size)
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = to_model_input(read_rgb(path), size, encoding="rgb8", resize=resize)
    return out


def _as_hw(image_size: tuple[int, int] | int) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


# --------------------------------------------------------------------------------------------- GSV


@dataclass(frozen=True)
class GSVPlace:
    """One place of a GSV-Cities-format dataset: a global label and the paths of all its images."""

    label: int
    city: str
    place_id: int
    images: tuple[Path, ...]
    lat: float
    lon: float


class GSVCities:
    """Index of a GSV-Cities-format folder: places with at least ``img_per_place`` images.

    ``cities`` restricts to some ``Dataframes/<City>.csv`` files (default: all). Labels are global
    (0..n_places-1) because place ids restart in every city. Sampling is deterministic given a seed,
    so training is reproducible and resumable whatever the number of loader workers.
    """

    def __init__(self, root: Path | str, cities: tuple[str, ...] | None = None, img_per_place: int = 4) -> None:
        self.root = Path(root)
        if img_per_place < 1:
            raise ValueError(f"img_per_place must be >= 1, got {img_per_place}")
        self.img_per_place = int(img_per_place)
        frames_dir, images_dir = self.root / "Dataframes", self.root / "Images"
        if not frames_dir.is_dir() or not images_dir.is_dir():
            raise FileNotFoundError(
                f"{self.root} is not a GSV-Cities-format folder: expected Dataframes/<City>.csv and "
                f"Images/<City>/*.jpg inside it"
            )
        csvs = sorted(frames_dir.glob("*.csv"))
        if cities is not None:
            wanted = set(cities)
            missing = wanted - {p.stem for p in csvs}
            if missing:
                raise FileNotFoundError(
                    f"cities {sorted(missing)} have no Dataframes/<City>.csv in {self.root}; "
                    f"available: {sorted(p.stem for p in csvs)}"
                )
            csvs = [p for p in csvs if p.stem in wanted]
        if not csvs:
            raise FileNotFoundError(f"no Dataframes/*.csv in {self.root}")
        places: list[GSVPlace] = []
        dropped = 0
        for csv_path in csvs:
            for city_place in _read_city(csv_path, images_dir / csv_path.stem):
                if len(city_place[3]) < self.img_per_place:
                    dropped += 1
                    continue
                city, place_id, (lat, lon), paths = city_place
                places.append(GSVPlace(len(places), city, place_id, tuple(paths), lat, lon))
        if not places:
            raise ValueError(
                f"no place in {self.root} has >= {self.img_per_place} images (img_per_place); "
                f"{dropped} places were too small"
            )
        if dropped:
            logger.info("dropped %d places with fewer than %d images", dropped, self.img_per_place)
        self.places: tuple[GSVPlace, ...] = tuple(places)
        self.cities = tuple(p.stem for p in csvs)
        logger.info("GSV-Cities %s: %d places from %d cities", self.root, len(self.places), len(self.cities))

    def __len__(self) -> int:
        return len(self.places)

    def sample_paths(self, index: int, rng: np.random.Generator) -> list[Path]:
        """``img_per_place`` distinct image paths of place ``index``, chosen by ``rng``."""
        images = self.places[index].images
        pick = rng.choice(len(images), size=self.img_per_place, replace=False)
        return [images[i] for i in sorted(pick)]

    def load_place(
        self, index: int, image_size: tuple[int, int] | int, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Images of one place: (uint8 (K, H, W, 3) RGB, label int)."""
        return load_model_inputs(self.sample_paths(index, rng), image_size), self.places[index].label


def _read_city(csv_path: Path, images_dir: Path) -> list[tuple[str, int, tuple[float, float], list[Path]]]:
    """Places of one city: (city, place_id, (lat, lon), image paths) in CSV order."""
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{csv_path} has no image folder {images_dir}")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in GSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path} lacks columns {missing}; GSV-Cities CSVs have {list(GSV_COLUMNS)}")
        rows = list(reader)
    by_key = _index_image_folder(images_dir)
    grouped: dict[int, list[Path]] = {}
    position: dict[int, tuple[float, float]] = {}
    absent = 0
    for row in rows:
        try:
            place_id = int(row["place_id"])
            key = (place_id, int(row["year"]), int(row["month"]), int(float(row["northdeg"])), row["panoid"])
        except ValueError as err:
            raise ValueError(f"{csv_path}: bad row {row}: {err}") from err
        path = images_dir / _gsv_name(row)
        if not path.is_file():
            path = by_key.get(key)  # lat/lon formatted differently than in the CSV
        if path is None:
            absent += 1
            continue
        grouped.setdefault(place_id, []).append(path)
        position.setdefault(place_id, (float(row["lat"]), float(row["lon"])))
    if absent:
        logger.warning("%s: %d of %d images listed in the CSV are missing in %s", csv_path.name, absent, len(rows), images_dir)
    return [(csv_path.stem, pid, position[pid], paths) for pid, paths in grouped.items()]


def _gsv_name(row: dict[str, str]) -> str:
    return (
        f"{row['city_id']}_{int(row['place_id']):07d}_{int(row['year']):04d}_{int(row['month']):02d}_"
        f"{int(float(row['northdeg'])):03d}_{row['lat']}_{row['lon']}_{row['panoid']}.jpg"
    )


def _index_image_folder(images_dir: Path) -> dict[tuple[int, int, int, int, str], Path]:
    """Map (place_id, year, month, northdeg, panoid) -> path for every parseable file name."""
    out = {}
    for path in images_dir.iterdir():
        m = _GSV_NAME.match(path.name)
        if m:
            key = (int(m["place"]), int(m["year"]), int(m["month"]), int(m["north"]), m["pano"])
            out[key] = path
    return out


# ---------------------------------------------------------------------------------------- downloader


@dataclass(frozen=True)
class DownloaderSet:
    """A downloader-format evaluation set: image paths and UTM positions (float64 (N, 2) east, north)."""

    root: Path
    database_paths: tuple[Path, ...]
    database_xy: np.ndarray
    query_paths: tuple[Path, ...]
    query_xy: np.ndarray


def parse_utm(name: str) -> tuple[float, float]:
    """(UTM east, UTM north) from a downloader-format name ``@east@north@zone@letter@lat@lon@...@.jpg``."""
    fields = name.split("@")
    if len(fields) < 3:
        raise ValueError(f"{name!r} is not a downloader-format name (@UTM_east@UTM_north@zone@...@.jpg)")
    try:
        return float(fields[1]), float(fields[2])
    except ValueError as err:
        raise ValueError(f"{name!r}: UTM east/north are not numbers (expected @east@north@...)") from err


def read_downloader_set(root: Path | str) -> DownloaderSet:
    """Read ``root/images/test/{database,queries}`` (``root`` may also be the ``test`` folder itself)."""
    root = Path(root)
    base = root / "images" / "test"
    if not base.is_dir() and (root / "database").is_dir():
        base = root
    db_dir, q_dir = base / "database", base / "queries"
    if not db_dir.is_dir() or not q_dir.is_dir():
        raise FileNotFoundError(
            f"{root} is not a downloader-format evaluation set: expected images/test/database/ and "
            f"images/test/queries/ with @east@north@zone@letter@lat@lon@...@.jpg images"
        )
    db_paths, q_paths = _list_images(db_dir), _list_images(q_dir)
    if not db_paths or not q_paths:
        raise ValueError(f"{base}: database has {len(db_paths)} images and queries {len(q_paths)}; both must be non-empty")
    return DownloaderSet(
        root=root,
        database_paths=tuple(db_paths),
        database_xy=np.array([parse_utm(p.name) for p in db_paths], dtype=np.float64),
        query_paths=tuple(q_paths),
        query_xy=np.array([parse_utm(p.name) for p in q_paths], dtype=np.float64),
    )


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
