"""How well a labelled result matches a ground-truth label map: one set of rules for training
validation (`training.finetune`) and the benchmarks in `bench/`.

Definitions (VerSe conventions where they exist; Sekuboyina et al., Med. Image Anal. 2021):
  truth bodies   every level code in the ground-truth map except the sacrum (S1 is not a vertebral body
                 the detector is scored on); centroid = mean voxel position, in RAS mm
  found          a truth body is found when its best-overlapping detected body has 3-D Dice >= 0.5
                 (a detection may be the best match of two truth bodies; each counts)
  identified     VerSe rule: a detection labelled L identifies truth body L when L is the truth body
                 closest to it and lies < 20 mm away
  loc_error_mm   centroid distance between a found truth body and its matched detection
  precision      detections matching a truth body, among those inside the annotated superior-inferior
                 range (+- 5 mm: labels of a lumbar scan stop at L1, so a correctly found T12 is not a
                 false positive); precision_all counts every detection
Only detections with a mask (``instance`` != 0) are scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core import anatomy
from ..core.result import SpineResult
from ..core.volume import Volume

IDENTIFICATION_MM = 20.0          # VerSe: farther than this from its truth body, a label does not count
FOUND_DICE = 0.5                  # a detected body this similar to a truth body has found it
RANGE_MARGIN_MM = 5.0             # detections this far beyond the annotated range still count for precision
NOT_SCORED = ("S1",)


@dataclass(frozen=True)
class TruthBody:
    level: str
    code: int
    centroid_ras: np.ndarray


@dataclass(frozen=True)
class BodyMatch:
    """A found truth body and the detection (index among the scored detections) that found it."""

    level: str
    detection: int
    dice: float
    loc_error_mm: float


@dataclass(frozen=True)
class CaseEvaluation:
    truth_levels: tuple[str, ...]
    detected: int                     # scored detections (with a mask)
    matches: tuple[BodyMatch, ...]    # one per found truth body
    identified: int
    inside_range: int                 # detections inside the annotated range
    matched_inside: int               # of those, the ones matching a truth body
    matched_detections: int           # detections matching any truth body

    @property
    def bodies(self) -> int:
        return len(self.truth_levels)

    @property
    def found(self) -> int:
        return len(self.matches)


# --- point sets -------------------------------------------------------------------------------
def identified(truth_centroids: np.ndarray, truth_levels: Sequence[str], centroids: np.ndarray,
               levels: Sequence[str], max_mm: float = IDENTIFICATION_MM) -> np.ndarray:
    """Per truth body, whether it is identified (VerSe rule): some point carrying its level has it as
    the closest truth body, less than ``max_mm`` away."""
    truth_centroids = np.asarray(truth_centroids, float).reshape(-1, 3)
    centroids = np.asarray(centroids, float).reshape(-1, 3)
    hits = np.zeros(len(truth_levels), dtype=bool)
    if not len(truth_levels) or not len(centroids):
        return hits
    distance = np.linalg.norm(truth_centroids[:, None, :] - centroids[None, :, :], axis=2)   # truth x point
    closest = distance.argmin(axis=0)
    for point, truth in enumerate(closest):
        if levels[point] and levels[point] == truth_levels[truth] and distance[truth, point] < max_mm:
            hits[truth] = True
    return hits


# --- label maps -------------------------------------------------------------------------------
def truth_bodies(image: Volume, truth_codes: np.ndarray) -> list[TruthBody]:
    """The scored bodies of a ground-truth level map, cranial to caudal by code, with their centroids."""
    from scipy import ndimage

    codes = [int(c) for c in np.unique(truth_codes) if c and anatomy.name_of(int(c)) not in NOT_SCORED]
    if not codes:
        return []
    centres = ndimage.center_of_mass(np.ones(truth_codes.shape, np.uint8), truth_codes, codes)
    ras = image.kji_to_ras(np.array(centres, float).reshape(-1, 3))
    return [TruthBody(anatomy.name_of(c), c, ras[n]) for n, c in enumerate(codes)]


def dice_matrix(truth_codes: np.ndarray, codes: Sequence[int], instances: np.ndarray,
                detections: Sequence[int]) -> np.ndarray:
    """3-D Dice of every truth body (by code) with every detected body (by instance): (truth, detection)."""
    if not len(codes) or not len(detections):
        return np.zeros((len(codes), len(detections)))
    width = int(max(int(instances.max()), max(detections))) + 1
    height = int(max(int(truth_codes.max()), max(codes))) + 1
    joint = np.bincount(truth_codes.astype(np.int64).ravel() * width + instances.astype(np.int64).ravel(),
                        minlength=height * width).reshape(height, width)
    overlap = joint[np.ix_(list(codes), list(detections))].astype(float)
    truth_size = joint.sum(axis=1)[list(codes)].astype(float)
    detection_size = joint.sum(axis=0)[list(detections)].astype(float)
    return 2 * overlap / (truth_size[:, None] + detection_size[None, :])


def match_bodies(truth: Sequence[TruthBody], dice: np.ndarray, centroids: np.ndarray,
                 min_dice: float = FOUND_DICE) -> list[BodyMatch]:
    """Each truth body's best-Dice detection, when that Dice reaches ``min_dice``."""
    matches = []
    for row, body in enumerate(truth):
        if not dice.shape[1]:
            break
        best = int(np.argmax(dice[row]))
        if dice[row, best] >= min_dice:
            error = float(np.linalg.norm(centroids[best] - body.centroid_ras))
            matches.append(BodyMatch(body.level, best, float(dice[row, best]), error))
    return matches


def inside_annotated_range(image: Volume, truth_codes: np.ndarray, codes: Sequence[int], centroids: np.ndarray,
                           margin_mm: float = RANGE_MARGIN_MM) -> np.ndarray:
    """Per detection, whether its superior coordinate lies within the labelled bodies' S range (+- margin)."""
    centroids = np.asarray(centroids, float).reshape(-1, 3)
    voxels = np.argwhere(np.isin(truth_codes, list(codes)))
    if not len(voxels):
        return np.zeros(len(centroids), dtype=bool)
    superior = image.kji_to_ras(voxels)[:, 2]
    s = centroids[:, 2]
    return (s >= superior.min() - margin_mm) & (s <= superior.max() + margin_mm)


def evaluate_case(result: SpineResult, truth_codes: np.ndarray) -> CaseEvaluation:
    """Score one detected and labelled case against its ground-truth level map (same grid)."""
    truth = truth_bodies(result.image, truth_codes)
    scored = [v for v in result.vertebrae if v.instance]
    centroids = np.array([v.centroid_ras for v in scored], float).reshape(-1, 3)
    codes = [b.code for b in truth]
    instances = result.instances if result.instances is not None else np.zeros(truth_codes.shape, np.uint16)
    matches = match_bodies(truth, dice_matrix(truth_codes, codes, instances, [v.instance for v in scored]),
                           centroids)
    inside = inside_annotated_range(result.image, truth_codes, codes, centroids)
    matched = {m.detection for m in matches}
    hits = identified(np.array([b.centroid_ras for b in truth]), [b.level for b in truth], centroids,
                      [v.level for v in scored])
    return CaseEvaluation(truth_levels=tuple(b.level for b in truth), detected=len(scored), matches=tuple(matches),
                          identified=int(hits.sum()), inside_range=int(inside.sum()),
                          matched_inside=len(matched & set(np.flatnonzero(inside).tolist())),
                          matched_detections=len(matched))


# --- over cases -------------------------------------------------------------------------------
def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 3) if len(values) else None


def summarise(cases: Sequence[CaseEvaluation]) -> dict:
    """recall, precision, precision_all, id_rate, loc_error_mm, dice (mean over found bodies), dice_min."""
    bodies = sum(c.bodies for c in cases)
    matches = [m for c in cases for m in c.matches]
    return {
        "cases": len(cases), "bodies": bodies,
        "recall": _ratio(sum(c.found for c in cases), bodies),
        "precision": _ratio(sum(c.matched_inside for c in cases), sum(c.inside_range for c in cases)),
        "precision_all": _ratio(sum(c.matched_detections for c in cases), sum(c.detected for c in cases)),
        "id_rate": _ratio(sum(c.identified for c in cases), bodies),
        "loc_error_mm": _mean([m.loc_error_mm for m in matches]),
        "dice": _mean([m.dice for m in matches]),
        "dice_min": round(min(m.dice for m in matches), 3) if matches else None,
    }
