"""`generate_phantom` and the `Phantom` it returns: levels placed, grid chosen, anatomy painted, image
rendered, and the exact truth recorded per vertebra; `make_phantom`, `genant_grade`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import anatomy
from ..core.errors import InputError
from ..core.volume import Volume
from .alignment_truth import alignment_truth, apply_listhesis, check_listhesis
from .canvas import _Canvas
from .disc_truth import discs_truth
from .grid import _content_box, _crop_superior_inferior, _directions, _grid
from .intensities import MODALITIES, render
from .level import DENS_LENGTH, DENS_RADIUS, _Level
from .placement import _check_fractures, _check_levels, _make_levels, _place
from .shapes import _paint_all
from .tissues import TISSUE_NAMES


def genant_grade(height_loss_percent: float | None) -> int:
    """Genant semi-quantitative grade from a height loss: <20 % 0, 20-25 % 1, 25-40 % 2, >40 % 3."""
    if height_loss_percent is None or height_loss_percent < 20.0:
        return 0
    if height_loss_percent < 25.0:
        return 1
    if height_loss_percent <= 40.0:
        return 2
    return 3


@dataclass
class Phantom:
    """A generated case: image, body label map (level codes), tissue classes and exact truth."""

    image: Volume          # float32, HU for CT, 0..~1000 for MR-like
    labels: Volume         # uint8 VerSe codes of the vertebral bodies (C1: anterior arch + lateral masses)
    truth: dict
    tissues: Volume | None = None   # uint8 tissue classes (TISSUE_NAMES), for re-rendering
    discs: Volume | None = None     # uint8 disc label values (core.discs: 100 + code of the vertebra above)

    def vertebra(self, level: str) -> dict:
        for entry in self.truth["vertebrae"]:
            if entry["level"] == level:
                return entry
        raise KeyError(level)

    def to_result(self, case_id: str = "phantom", with_discs: bool = False):
        """The phantom as a result with its true body masks (and, ``with_discs``, its true disc layer)."""
        from ..core.result import SpineResult

        modality = {"ct": "ct", "t1": "mr", "t2": "mr"}.get(self.truth["modality"], "unknown")
        result = SpineResult.from_level_map(case_id, self.image, self.labels.array, source="phantom",
                                            modality=modality, truth=self.truth)
        if with_discs and self.discs is not None:
            from ..core.disc_layer import layer_from_labels

            layer_from_labels(result, self.discs.array)
        return result


def _truth_entry(level: _Level, inside: int, total: int, centroid) -> dict:
    anterior, middle, posterior = level.analytic_heights()
    kind, percent = level.fracture if level.fracture else (None, None)
    return {
        "level": level.name,
        "code": anatomy.code_of(level.name),
        "centroid_ras": None if centroid is None else [float(c) for c in centroid],
        "center_ras": [float(c) for c in level.origin],
        "axes_ras": {"right": level.axes[:, 0].tolist(), "anterior": level.axes[:, 1].tolist(),
                     "superior": level.axes[:, 2].tolist()},
        "height_anterior_mm": anterior,
        "height_middle_mm": middle,
        "height_posterior_mm": posterior,
        "height_expected_mm": level.body_height if level.has_body else None,
        "depth_mm": level.depth if level.has_body else None,
        "width_mm": level.width if level.has_body else None,
        "fracture_type": kind,
        "fracture_percent": percent,
        "genant_grade": genant_grade(percent),
        "partial": bool(inside < total),
        "voxel_count": int(inside),
    }


def _centroid(canvas: _Canvas, code: int, level: _Level) -> np.ndarray | None:
    """Centroid (RAS) of the final label mask of one code, searched in the level's neighbourhood."""
    reach = max(level.width / 2, level.depth / 2, level.height / 2 + DENS_LENGTH + DENS_RADIUS, 30.0 * level.scale) + 2.0
    block = canvas.block(level.origin, level.axes, (-reach,) * 3, (reach,) * 3)
    if block is None:
        return None
    ranges = block[0]
    view = canvas.labels[tuple(slice(a, b) for a, b in ranges)]
    mask = view == code
    count = int(mask.sum())
    if not count:
        return None
    # mean index per axis from the projections: far cheaper than listing every voxel
    kji = np.array([(mask.sum(axis=tuple(a for a in range(3) if a != n)) * np.arange(mask.shape[n])).sum() / count
                    for n in range(3)]) + np.array([a for a, _ in ranges])
    ijk = kji[::-1]
    return canvas.affine[:3, :3] @ ijk + canvas.affine[:3, 3]


def generate_phantom(levels: list[str], modality: str = "ct", spacing=(1.0, 1.0, 1.0), seed: int = 0, *,
                     fractures: dict[str, tuple[str, float]] | None = None, lordosis_deg: float = 0.0,
                     scoliosis_deg: float = 0.0, rotation_deg: tuple[float, float, float] = (0, 0, 0),
                     field_of_view: tuple[float, float] | None = None, noise: float | None = None,
                     bias_field: bool = True, direction=None, axial_rotation_deg: float | None = None,
                     size_jitter: float = 0.03, angle_jitter_deg: float = 0.0,
                     lateral_fov_mm: float | None = 200.0, crop_to_spine: bool = False,
                     physiological_curves: bool = False, texture: float = 0.0, blur_mm: float = 0.0,
                     ribs: bool = True, listhesis: dict[str, float] | None = None) -> Phantom:
    """Build a spine phantom with exact truth (see the module docstring for the construction).

    levels: contiguous names from anatomy.ORDER, cranial first. spacing: (i, j, k) mm.
    fractures: {"L1": ("wedge", 30)}; types wedge | biconcave | crush, height loss 0-60 %.
    lordosis_deg: sagittal angle between the first and last level (negative = kyphosis).
    scoliosis_deg: coronal (Cobb-like) angle, convex to the right when positive; vertebrae rotate
    axially towards the convexity by axial_rotation_deg at the apex (default 0.4 * scoliosis_deg).
    rotation_deg: rotation (about R, A, S) of the acquisition grid, applied to `direction` (3x3,
    columns = RAS directions of i, j, k; default diag(-1, -1, 1) = LPS storage).
    field_of_view: (superior_cut_mm, inferior_cut_mm): the image starts that far below the superior
    end plate of the first level and ends that far above the inferior end plate of the last one;
    bodies losing voxels are marked partial. lateral_fov_mm: width of the image (None = whole
    torso); crop_to_spine: image only the vertebrae with a small margin (small, fast volumes).
    size_jitter: relative SD of per-level size; angle_jitter_deg: SD of per-level tilt and rotation.
    physiological_curves: add typical regional curves (cervical lordosis 25, thoracic kyphosis 40,
    lumbar lordosis 50 degrees, pro rata for partial regions) on top of lordosis_deg.
    texture (e.g. 0.1) and blur_mm (e.g. 0.6): smooth tissue heterogeneity and a Gaussian point-spread
    function, for more realistic training images (see `render`); both off by default (speed).
    ribs: paint a pair of ribs on every thoracic level (T1-T12, T13); False for a rib-less thorax.
    listhesis: {"L4": 6.0}: L4 (and everything above) slips 6 mm anterior (negative: posterior) over L5,
    along L5's superior endplate. The truth carries the analytic endplate angles, Cobb angle and slips
    (`truth["alignment"]`, see `alignment_truth`).
    """
    names, modality, spacing, fractures = _check_inputs(levels, modality, spacing, fractures)
    rng = np.random.default_rng([int(seed), 0])
    built = _make_levels(names, fractures, rng, size_jitter)
    jitter = angle_jitter_deg * rng.standard_normal((len(built), 3))
    axial_apex = 0.4 * scoliosis_deg if axial_rotation_deg is None else axial_rotation_deg
    _place(built, lordosis_deg, scoliosis_deg, axial_apex, jitter, physiological_curves)
    slips = check_listhesis(listhesis, names)
    apply_listhesis(built, slips)
    shape, affine = _grid(_content_box(built, lateral_fov_mm, crop_to_spine), spacing,
                          _directions(rotation_deg, direction))
    if field_of_view is not None:
        shape, affine = _crop_superior_inferior(shape, affine, built, field_of_view)
    canvas = _Canvas(shape, affine)
    counts = _paint_all(canvas, built, ribs)
    image = render(canvas.tissues, modality, seed, noise, bias_field, texture=texture, blur_mm=blur_mm, spacing=spacing)
    parameters = {"fractures": {k: list(v) for k, v in fractures.items()}, "lordosis_deg": lordosis_deg,
                  "scoliosis_deg": scoliosis_deg, "axial_rotation_apex_deg": axial_apex,
                  "rotation_deg": [float(r) for r in rotation_deg],
                  "field_of_view": None if field_of_view is None else [float(c) for c in field_of_view],
                  "noise": noise, "bias_field": bias_field, "size_jitter": size_jitter,
                  "angle_jitter_deg": angle_jitter_deg, "physiological_curves": physiological_curves,
                  "texture": texture, "blur_mm": blur_mm, "lateral_fov_mm": lateral_fov_mm,
                  "crop_to_spine": crop_to_spine, "ribs": ribs, "listhesis": slips}
    truth = {"modality": modality, "spacing": spacing.tolist(), "seed": int(seed), "levels": names,
             **_vertebra_truth(canvas, built, counts), "parameters": parameters,
             "height_definition": "mid-sagittal plane of the vertebra, along its superior axis, at 10/50/90 % "
                                  "of the body depth from the anterior edge",
             "tissues": list(TISSUE_NAMES)}
    truth["alignment"] = alignment_truth(built, [v["level"] for v in truth["vertebrae"]], slips)
    truth["discs"] = discs_truth(built, {v["level"] for v in truth["vertebrae"]})
    meta = {"phantom": True, "modality": modality}
    return Phantom(Volume(image, affine, dict(meta)), Volume(canvas.labels, affine.copy(), dict(meta)), truth,
                   Volume(canvas.tissues, affine.copy(), dict(meta)), Volume(canvas.discs, affine.copy(), dict(meta)))


def _check_inputs(levels, modality, spacing, fractures):
    names = _check_levels(levels)
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise InputError(f"phantom: modality must be one of {MODALITIES}, got {modality!r}")
    spacing = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
    if np.any(spacing < 0.1) or np.any(spacing > 10):
        raise InputError(f"phantom: spacing {spacing.tolist()} mm is outside 0.1-10 mm")
    return names, modality, spacing, _check_fractures(fractures, names)


def _vertebra_truth(canvas: _Canvas, levels: list[_Level], counts: dict) -> dict:
    """Per-level truth entries for levels with voxels in the image; the names of those without."""
    entries, outside = [], []
    for level in levels:
        inside, total = counts[level.name]
        centroid = _centroid(canvas, anatomy.code_of(level.name), level) if inside else None
        if centroid is None:
            outside.append(level.name)
        else:
            entries.append(_truth_entry(level, inside, total, centroid))
    return {"vertebrae": entries, "outside_field_of_view": outside}


def make_phantom(levels: str | list[str] = "T12-L3", case_id: str = "phantom", **kwargs):
    """Convenience for demos and self-tests: a level range ('T12-L3') or list -> SpineResult of a phantom."""
    names = anatomy.parse_level_range(levels) if isinstance(levels, str) else list(levels)
    phantom = generate_phantom(names, **kwargs)
    return phantom.to_result(case_id)
