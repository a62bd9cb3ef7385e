"""Shared fixtures: a small synthetic SpineResult on an oblique, anisotropic grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from SpineLabelLib.core.result import SpineResult, Vertebra
from SpineLabelLib.core.volume import Volume, make_affine

FIXTURES = Path(__file__).parent / "fixtures"


def oblique_directions(degrees: float = 20.0) -> np.ndarray:
    """A rotation about an oblique axis (columns = RAS directions of i, j, k), not axis-aligned."""
    from scipy.spatial.transform import Rotation

    axis = np.array([1.0, 0.5, 0.3]) / np.linalg.norm([1.0, 0.5, 0.3])
    return Rotation.from_rotvec(np.deg2rad(degrees) * axis).as_matrix()


def oblique_image(shape_kji=(24, 20, 16), spacing=(1.3, 0.9, 2.1), seed: int = 0) -> Volume:
    """A random int16 CT-like image: i, j, k spacings differ, directions rotated, origin off-centre."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-200, 200, size=shape_kji).astype(np.int16)
    return Volume(array, make_affine(spacing, oblique_directions(), origin=(-12.5, 30.25, -70.0)))


def box_result(case_id: str = "synthetic case", levels=("L1", "L2", "L3")) -> SpineResult:
    """Three box-shaped bodies stacked along k (the grid's own axis), labelled L1-L3 top to bottom."""
    image = oblique_image()
    image.array[:] = np.clip(image.array, -200, 0)
    instances = np.zeros(image.array.shape, dtype=np.uint16)
    vertebrae = []
    # Bodies along k; image k axis points roughly superior, so higher k = more cranial.
    boxes = [(slice(16, 21), slice(5, 13), slice(4, 11)),
             (slice(9, 14), slice(6, 14), slice(5, 12)),
             (slice(2, 7), slice(5, 14), slice(3, 12))]
    for n, (level, box) in enumerate(zip(levels, boxes), start=1):
        instances[box] = n
        image.array[box] = 700 + 50 * n
        centre_kji = np.array([(s.start + s.stop - 1) / 2.0 for s in box])
        vertebrae.append(Vertebra(level, image.kji_to_ras(centre_kji)[0], instance=n, score=0.9 - 0.1 * n,
                                  source="detector", locked=(level == "L2")))
    result = SpineResult(case_id, image, vertebrae, instances, modality="ct", input_path="/data/case.nii.gz",
                         input_sha256="0" * 64, models=[{"name": "toy", "version": "1", "sha256": "a" * 64}],
                         timings={"load": 0.1, "detect": 1.5}, warnings=["synthetic"])
    result.sort_cranio_caudal()
    return result


@pytest.fixture
def spine_result() -> SpineResult:
    return box_result()


@pytest.fixture
def image() -> Volume:
    return oblique_image()


def flip_a_byte(path: Path, offset: int = -1) -> None:
    """Damage a file by one bit (a tampered or corrupted model file)."""
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="session")
def blob_model_dir(tmp_path_factory) -> Path:
    """A model folder of the tests' tiny detector family (`blob_family`): bright blobs are bodies."""
    import blob_family

    return blob_family.write_model(tmp_path_factory.mktemp("models") / "blob-detector")


@pytest.fixture
def blob_plugin_path(tmp_path, monkeypatch) -> Path:
    """The blob family installed as a plugin (entry point) for child processes: on sys.path."""
    import blob_family

    site = blob_family.write_entry_point(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    return site
