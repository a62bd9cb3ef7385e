"""Phantom spines with real geometry: curvature and field of view of the VID keypoint spines.

The VID dataset (Bürgin et al., MICCAI 2023; keypoints/vid under the data root) gives, for 1947 real
spines, the body keypoints (world mm, LPS) of the levels in view. From each spine we take:
  levels        the contiguous run of labelled levels (its field of view; T13/L6 when labelled)
  lordosis_deg  the sagittal angle between the spine's direction at its top and at its bottom
                (negative = kyphosis), as generate_phantom defines it
  scoliosis_deg the same angle in the coronal plane
and hand them to `phantom.generate_phantom` (sizes and shapes stay the phantom's own).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core import anatomy


def body_points(path: Path) -> dict[str, np.ndarray]:
    """Level name -> body keypoint (LPS mm) of one VID ground-truth file."""
    points = {}
    for entry in json.loads(Path(path).read_text()):
        kind = entry.get("type", {})
        if kind.get("keypoint_type") == "body" and kind.get("spine_level") in anatomy.CODE_BY_NAME:
            points[kind["spine_level"]] = np.asarray(entry["coordinates"]["world_space"], float)
    return points


def _angle(first: np.ndarray, last: np.ndarray, axis: int) -> float:
    """Signed angle (degrees) between two down-the-spine directions projected on the plane of
    superior-inferior (LPS z) and ``axis`` (1 = anterior-posterior, 0 = left-right)."""
    a = np.arctan2(first[axis], -first[2])
    b = np.arctan2(last[axis], -last[2])
    return float(np.rad2deg(b - a))


def vid_geometry(points: dict[str, np.ndarray]) -> dict | None:
    """Levels, lordosis and scoliosis of one VID spine; None when fewer than 4 contiguous levels."""
    names = sorted(points, key=anatomy.order_index)
    run = [names[0]] if names else []
    for name in names[1:]:
        if anatomy.order_index(name) == anatomy.order_index(run[-1]) + 1:
            run.append(name)
        else:
            break
    if len(run) < 4:
        return None
    xyz = np.array([points[n] for n in run])
    top, bottom = xyz[1] - xyz[0], xyz[-1] - xyz[-2]
    # LPS: +y is posterior. A lordotic (posteriorly concave) run turns from anterior-going to
    # posterior-going downwards; generate_phantom calls that positive lordosis.
    return {"levels": run, "lordosis_deg": float(np.clip(_angle(top, bottom, 1), -70, 80)),
            "scoliosis_deg": float(np.clip(_angle(top, bottom, 0), -40, 40))}


def vid_phantom_parameters(path: Path, seed: int) -> dict | None:
    """generate_phantom keyword arguments for one VID spine (random contrast and grid tilt)."""
    geometry = vid_geometry(body_points(path))
    if geometry is None:
        return None
    rng = np.random.default_rng([seed, 11])
    if geometry["levels"][-1] in ("L5", "L6") and rng.random() < 0.5:
        geometry["levels"] = geometry["levels"] + ["S1"]   # "NoSacrum": the sacrum was in view, unlabelled
    return {**geometry, "modality": str(rng.choice(["ct", "ct", "t1", "t2", "random"])), "seed": seed,
            "spacing": (1.25, 1.25, 1.25), "rotation_deg": tuple(float(a) for a in rng.uniform(-8, 8, 3)),
            "lateral_fov_mm": float(rng.uniform(100, 220))}


def make_vid_phantoms(vid_dir: Path, out: Path, count: int, spacing: float = 1.25, first: int = 0) -> list[Path]:
    """``count`` phantoms from VID spines (every n-th file in name order), as vidphantom_*.npz."""
    from ..models.maskrcnn.data import prepare_case
    from ..phantom import generate_phantom

    files = sorted(Path(vid_dir).glob("*.json"))
    step = max(1, len(files) // max(count, 1))
    written = []
    for n, path in enumerate(files[first * step::step][:count]):
        target = out / f"vidphantom_{path.stem}.npz"
        if target.exists():
            written.append(target)
            continue
        params = vid_phantom_parameters(path, seed=2000 + n)
        if params is None:
            continue
        params["spacing"] = (spacing,) * 3
        phantom = generate_phantom(**params)
        modality = "ct" if params["modality"] == "ct" else "mr"
        prepare_case(phantom.image, phantom.labels, spacing, target, "phantom", modality=modality)
        print("vid phantom", target.name, params["levels"][0], params["levels"][-1],
              round(params["lordosis_deg"]), round(params["scoliosis_deg"]), flush=True)
        written.append(target)
    return written
