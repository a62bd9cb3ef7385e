"""Dense to sparse (paper 002, section 2.4): votes -> vertebrae with centroids, masks and level
probabilities.

A voxel votes when stage 1 calls it column (probability >= 0.5, the paper's product of the two
maps with a binary detection); its vote is the level whose axis value is nearest to stage 2's
index. A level is kept when its votes fill at least x_v = max(floor, 0.4 R_v^3) mm^3 (paper:
max(3000, 0.4 R_v^3) voxels of 1 mm^3) by the largest connected piece of its votes; its
centroid is the median position of that piece (islands of index noise elsewhere would drag the
paper's median of all votes away). T13
and L6 must also hold three quarters of their smaller neighbour's votes (`_drop_boundary_transitionals`),
and of two levels closer than half a body-plus-disc the one with fewer votes goes (`_drop_crowded`).
Our floor is 2000 mm^3, lower than the paper's 3000: a cervical tube segment (R = 8 mm, 19 mm of
body and disc) holds ~3800 mm^3, so with 3000 a cervical body drawn a little thin by stage 1 would
be dropped; 2000 (about half a cervical segment) still rejects the few hundred voxels whose noisy
index spills into the level beyond the end of the column.

Then each column voxel joins the nearest kept centroid (radius-relative, within 1.5 radii): that
region is the body's mask (largest connected piece), and the distribution of its voxels' indices
gives the level probabilities (`level_distribution`), so a body whose votes split between L4 and
L5 says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .targets import AXIS, BIN_NAMES, BIN_VALUES, OUTPUT_LEVELS, disc_radius_mm, nearest_bin

PAPER_MIN_VOTES_MM3 = 3000.0
MIN_VOTES_MM3 = 2000.0


@dataclass
class DenseBody:
    level: str
    centroid: np.ndarray            # voxel index (x, row, col) on the aggregation grid
    votes: int
    level_probs: dict[str, float]   # over anatomy.ORDER
    score: float


def vote_threshold_mm3(name: str, floor_mm3: float = MIN_VOTES_MM3) -> float:
    """Paper 002's per-level threshold x_v = max(floor, 0.4 R_v^3), in mm^3."""
    return max(floor_mm3, 0.4 * disc_radius_mm(name) ** 3)


def level_votes(detection: np.ndarray, index: np.ndarray, threshold: float = 0.5):
    """Voting voxels (N, 3) and the bin (index into BIN_NAMES) of each vote."""
    voting = np.argwhere(detection >= threshold)
    values = index[tuple(voting.T)]
    return voting, nearest_bin(values), values


def aggregate(detection: np.ndarray, index: np.ndarray, spacing_mm: float,
              floor_mm3: float = MIN_VOTES_MM3, sigma: float = 0.15, reach: float = 1.5):
    """Bodies and an instance map (0 = none, n = bodies[n - 1]) on the grid of the two maps.

    detection: stage-1 probability; index: stage-2 level index (same shape)."""
    from scipy import ndimage

    instances = np.zeros(detection.shape, np.uint16)
    voting, bins, values = level_votes(detection, index)
    voxel_mm3 = spacing_mm ** 3
    kept = []
    for name in OUTPUT_LEVELS:
        mine = np.flatnonzero(bins == BIN_NAMES.index(name))
        if mine.size * voxel_mm3 < vote_threshold_mm3(name, floor_mm3):
            continue
        # A level's votes in one piece: the largest connected set is the vertebra, scattered
        # islands elsewhere on the column are index noise and would drag the median away.
        mine = mine[_largest_piece(voting[mine], ndimage)]
        if mine.size * voxel_mm3 >= vote_threshold_mm3(name, floor_mm3):
            kept.append((name, np.median(voting[mine], axis=0), int(mine.size)))
    kept = _drop_crowded(_drop_boundary_transitionals(kept), spacing_mm)
    if not kept:
        return [], instances
    centres_mm = np.array([c for _, c, _ in kept]) * spacing_mm
    radii = np.array([disc_radius_mm(n) for n, _, _ in kept])
    distance = np.linalg.norm(voting[:, None, :] * spacing_mm - centres_mm[None], axis=2) / radii[None]
    owner = distance.argmin(axis=1)
    near = distance[np.arange(len(owner)), owner] <= reach
    bodies = []
    for n, (name, centre, votes) in enumerate(kept):
        chosen = np.flatnonzero(near & (owner == n))
        chosen = chosen[_largest_piece(voting[chosen], ndimage)]
        number = len(bodies) + 1
        instances[tuple(voting[chosen].T)] = number
        probs = level_distribution(values[chosen], sigma)
        score = float(np.mean(detection[tuple(voting[chosen].T)])) * probs[name] if chosen.size else 0.0
        bodies.append(DenseBody(name, np.asarray(centre, float), votes, probs, score))
    return bodies, instances


def _drop_boundary_transitionals(kept: list, share: float = 0.75) -> list:
    """T13 and L6 have half-width bins between two levels: the noisy indices where T12 meets L1
    (or L5 meets S1) fill them with a thin slab of votes. A real transitional vertebra has a whole
    tube segment, about as many votes as its neighbours: keep it only with at least ``share`` of
    the smaller neighbour's votes (indices with an error of 0.3 levels spill 0.4 of a level into
    the bin; the rule was checked on synthetic maps, not tuned on data)."""
    from ...core import anatomy

    votes = {name: count for name, _, count in kept}
    out = []
    for entry in kept:
        name = entry[0]
        if name in anatomy.TRANSITIONAL:
            position = anatomy.ORDER.index(name)
            neighbours = [votes[n] for n in anatomy.ORDER[position - 1: position + 2: 2] if n in votes]
            if neighbours and entry[2] < share * min(neighbours):
                continue
        out.append(entry)
    return out


def _drop_crowded(kept: list, spacing_mm: float, fraction: float = 0.5) -> list:
    """Two vertebrae are never closer than about one body plus one disc: of two kept levels whose
    centroids are closer than ``fraction`` of that (the larger level's), the one with fewer votes
    goes (index noise that formed a piece of its own next to a real body)."""
    from ...core import anatomy

    order = sorted(range(len(kept)), key=lambda n: -kept[n][2])
    chosen: list[int] = []
    for n in order:
        name, centre, _ = kept[n]
        crowded = False
        for m in chosen:
            other, other_centre, _ = kept[m]
            sizes = [anatomy.body_size(x) for x in (name, other)]
            reach = fraction * max(s.height + s.disc for s in sizes)
            if np.linalg.norm((np.asarray(centre) - np.asarray(other_centre)) * spacing_mm) < reach:
                crowded = True
                break
        if not crowded:
            chosen.append(n)
    return [kept[n] for n in sorted(chosen)]


def level_distribution(values: np.ndarray, sigma: float = 0.15, floor: float = 1e-3) -> dict[str, float]:
    """Probabilities over anatomy.ORDER from a region's predicted indices: each voxel's index is
    read as a Gaussian of width ``sigma`` (index units) and contributes the share of it that falls
    in each level's bin on the axis, so T13 and L6 get what lands in their half-width bins;
    mixed with a small uniform floor so that no level is ever impossible."""
    from scipy.special import ndtr

    if values.size == 0:
        uniform = 1.0 / len(BIN_NAMES)
        return {name: uniform for name in BIN_NAMES}
    # At most a few thousand voxels per body; subsample beyond that (the distribution is smooth).
    values = np.asarray(values, float)[:: max(1, values.size // 4000)]
    edges = np.concatenate([[-np.inf], (BIN_VALUES[1:] + BIN_VALUES[:-1]) / 2, [np.inf]])
    cumulative = ndtr((edges[None, :] - values[:, None]) / sigma)
    weights = np.diff(cumulative, axis=1).sum(axis=0)
    probs = weights / max(weights.sum(), 1e-12)
    probs = (1 - floor * len(probs)) * probs + floor
    return {name: float(p) for name, p in zip(BIN_NAMES, probs)}


def _largest_piece(points: np.ndarray, ndimage) -> np.ndarray:
    """Which of the voxel ``points`` (N, 3) form their largest 26-connected piece (in their box)."""
    if len(points) == 0:
        return np.zeros(0, bool)
    low = points.min(axis=0)
    local = points - low
    mask = np.zeros(tuple(local.max(axis=0) + 1), bool)
    mask[tuple(local.T)] = True
    pieces, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    labels = pieces[tuple(local.T)]
    if count <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(np.bincount(labels, minlength=count + 1)[1:]))


__all__ = ["AXIS", "DenseBody", "aggregate", "level_distribution", "level_votes", "vote_threshold_mm3"]
