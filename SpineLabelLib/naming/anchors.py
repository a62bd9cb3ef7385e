"""Anatomical anchors for level naming: the first sacral segment, the axis (C2) and the rib-bearing vertebrae.

Counting vertebrae from spacing and appearance alone drifts by one level as soon as the ends of the spine
are out of view or look unusual (a sacrum taken for L5 shifts every lumbar name). Three landmarks pin the
count down, and radiologists use exactly these:
  sacrum  the first sacral segment is S1, so the free vertebra directly above it is L5 (L6 only when six
          free lumbar vertebrae sit above a visible sacrum);
  C2      the axis, the tallest cervical body (body plus dens), at the top of the column;
  ribs    on CT the rib-bearing vertebrae are thoracic: T1 is the first with a rib, T12 the last (T13 only
          when 13 rib-bearing vertebrae are counted).

Evidence is a probability per point (NaN = no information: MRI has no rib evidence, a point a person added
has none). It enters the level assignment as extra unary costs, -weight * log p for the levels the
evidence supports and -weight * log(1 - p) for the others, so a strong anchor outweighs level scores and
spacing but a weak or wrong one can still be overruled by everything else together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import anatomy

LEVELS = anatomy.ORDER
RIB_BEARING = frozenset([*(f"T{n}" for n in range(1, 13)), "T13"])
#: Evidence counts as "seen" from this probability on (anchors in view, T13/L6 gates).
PRESENT = 0.5


@dataclass(frozen=True)
class AnchorWeights:
    """Weights of the anchor costs (negative log-likelihood units, as the rest of the assignment)."""

    rib: float = 1.5
    sacrum: float = 3.0       # the sacrum is the anchor radiologists count from (L5 directly above it)
    c2: float = 1.5
    floor: float = 0.02       # probabilities are clipped to [floor, 1 - floor]: no anchor is infinitely sure


DEFAULT_WEIGHTS = AnchorWeights()


@dataclass
class AnchorEvidence:
    """Per-point probabilities (N,), NaN where nothing is known.

    rib: the vertebra bears a rib; sacrum: it is the first sacral segment; c2: it is the axis.
    """

    rib: np.ndarray
    sacrum: np.ndarray
    c2: np.ndarray

    @classmethod
    def empty(cls, n: int) -> "AnchorEvidence":
        nan = np.full(n, np.nan)
        return cls(nan.copy(), nan.copy(), nan.copy())

    @classmethod
    def from_dicts(cls, evidence: list[dict | None]) -> "AnchorEvidence":
        """From `Vertebra.evidence` dicts ({"rib": p, "sacrum": p, "c2": p}; missing keys or None = unknown)."""
        def column(key):
            return np.array([float(e[key]) if e and e.get(key) is not None else np.nan for e in evidence])
        return cls(column("rib"), column("sacrum"), column("c2"))

    def __len__(self) -> int:
        return len(self.rib)

    def subset(self, index) -> "AnchorEvidence":
        return AnchorEvidence(self.rib[index], self.sacrum[index], self.c2[index])

    @property
    def has_ribs(self) -> bool:
        """Rib information exists (CT): at least one point was examined for ribs."""
        return bool(np.any(np.isfinite(self.rib)))

    def rib_bearing(self) -> np.ndarray:
        return np.nan_to_num(self.rib, nan=0.0) >= PRESENT

    def sacrum_seen(self) -> np.ndarray:
        return np.nan_to_num(self.sacrum, nan=0.0) >= PRESENT

    def c2_seen(self) -> np.ndarray:
        return np.nan_to_num(self.c2, nan=0.0) >= PRESENT


def _two_sided(p: np.ndarray, supported: np.ndarray, weight: float, floor: float) -> np.ndarray:
    """(N, N_LEVELS): -w log p on the supported levels, -w log(1-p) on the rest; 0 where p is NaN."""
    known = np.isfinite(p)
    q = np.clip(np.nan_to_num(p, nan=0.5), floor, 1 - floor)
    cost = np.where(supported[None, :], -np.log(q)[:, None], -np.log(1 - q)[:, None]) * weight
    cost[~known] = 0.0
    return cost


def anchor_costs(evidence: AnchorEvidence, weights: AnchorWeights = DEFAULT_WEIGHTS) -> np.ndarray:
    """(N, N_LEVELS) unary costs added to the level assignment's own."""
    ribbed = np.array([name in RIB_BEARING for name in LEVELS])
    sacral = np.array([name == "S1" for name in LEVELS])
    axis = np.array([name == "C2" for name in LEVELS])
    return (_two_sided(evidence.rib, ribbed, weights.rib, weights.floor)
            + _two_sided(evidence.sacrum, sacral, weights.sacrum, weights.floor)
            + _two_sided(evidence.c2, axis, weights.c2, weights.floor))


def skip_costs(evidence: AnchorEvidence, weights: AnchorWeights = DEFAULT_WEIGHTS) -> np.ndarray:
    """(N,) extra cost of judging a point spurious: sacrum and C2 evidence say it is a real vertebra
    (as much as naming it anything else would cost). Rib evidence does not: a stray detection beside
    the column can sit on a rib."""
    cost = np.zeros(len(evidence))
    for p, weight in ((evidence.sacrum, weights.sacrum), (evidence.c2, weights.c2)):
        known = np.isfinite(p)
        q = np.clip(np.nan_to_num(p, nan=0.0), weights.floor, 1 - weights.floor)
        cost += np.where(known, -np.log(1 - q) * weight, 0.0)
    return cost


def transitional_allowed(evidence: AnchorEvidence, chain: np.ndarray) -> dict[str, bool]:
    """Whether T13 and L6 may be used at all: only on evidence, never to make a fit work.

    T13: 13 rib-bearing vertebrae counted. L6: a visible sacrum with six free (rib-less) vertebrae
    above it, counted up to the last rib-bearing one when ribs are known, else up to the top of the
    chain (the spacing and level scores then decide whether the sixth is L6 or T12).
    `chain` holds the point indices in cranio-caudal order.
    """
    ribbed = evidence.rib_bearing()[chain]
    sacrum = evidence.sacrum_seen()[chain]
    t13 = evidence.has_ribs and int(ribbed.sum()) >= 13
    l6 = False
    if sacrum.any():
        first_sacral = int(np.argmax(sacrum))
        above = np.arange(first_sacral)
        if evidence.has_ribs and ribbed[:first_sacral].any():
            last_rib = int(np.flatnonzero(ribbed[:first_sacral])[-1])
            above = above[above > last_rib]
        l6 = len(above) >= 6
    return {"T13": t13, "L6": l6}


def any_seen(evidence: AnchorEvidence | None, chain: np.ndarray | None = None) -> bool:
    """Whether an anchor can fix the count: a sacrum or C2 seen, or on CT a change between rib-bearing and
    rib-less vertebrae along the chain (ribs on every point, or on none, do not say where T12 is)."""
    if evidence is None or len(evidence) == 0:
        return False
    if evidence.sacrum_seen().any() or evidence.c2_seen().any():
        return True
    chain = np.arange(len(evidence)) if chain is None else np.asarray(chain, int)
    known = chain[np.isfinite(evidence.rib[chain])]
    ribbed = evidence.rib_bearing()[known]
    return bool(ribbed.any() and not ribbed.all())


def gate_transitional(unary: np.ndarray, allowed: dict[str, bool]) -> np.ndarray:
    """Forbid (infinite cost) the transitional levels without evidence."""
    unary = unary.copy()
    for name, ok in allowed.items():
        if not ok:
            unary[:, LEVELS.index(name)] = np.inf
    return unary


# --- which anchors a labelling rests on ------------------------------------------------------------
def anchors_in_view(names: list[str], evidence: AnchorEvidence | None, order: np.ndarray) -> list[str]:
    """The anchors the final naming agrees with: 'sacrum', 'C2', 'last rib', 'first rib', 'person'.

    A rib anchor needs the transition itself in view: a rib-bearing vertebra named T12 with a rib-less one
    named L1 below it (or C7 rib-less above a rib-bearing T1). A person's locked level is not counted
    here (the caller adds it). `order`: point indices cranio-caudally.
    """
    if evidence is None or len(evidence) == 0:
        return []
    found = []
    named = [int(i) for i in order if names[int(i)]]
    ribbed, sacrum, c2 = evidence.rib_bearing(), evidence.sacrum_seen(), evidence.c2_seen()
    if any(sacrum[i] and names[i] == "S1" for i in named):
        found.append("sacrum")
    if any(c2[i] and names[i] == "C2" for i in named):
        found.append("C2")
    if evidence.has_ribs:
        known = [i for i in named if np.isfinite(evidence.rib[i])]
        for upper, lower in zip(known, known[1:]):
            if ribbed[upper] and not ribbed[lower] and names[upper] in ("T12", "T13") and names[lower] == "L1":
                found.append("last rib")
            if not ribbed[upper] and ribbed[lower] and names[upper] == "C7" and names[lower] == "T1":
                found.append("first rib")
    return found


# --- evidence from an image and its detections ------------------------------------------------------
#: The axis (body plus dens) is this much taller than the cervical bodies below it (C2 ~ 22 mm with the
#: dens against 14-15 mm for C3-C5; anatomy.body_size).
C2_HEIGHT_RATIO = 1.35
CERVICAL_STEP_MM = 21.0      # below this median spacing the bodies under the candidate are cervical-sized


def body_heights_mm(result) -> np.ndarray:
    """(N,) extent of each body mask along the column (2nd-98th percentile), NaN without a mask.
    Vertebrae in `result.vertebrae` order, which must be cranio-caudal."""
    from .ribs import vertebra_frame

    points = np.array([v.centroid_ras for v in result.vertebrae]).reshape(-1, 3)
    heights = np.full(len(points), np.nan)
    if result.instances is None or result.image is None:
        return heights
    from scipy import ndimage

    boxes = ndimage.find_objects(result.instances)       # one pass over the map, then each body's own box
    for n, v in enumerate(result.vertebrae):
        if not v.instance or v.instance > len(boxes) or boxes[v.instance - 1] is None:
            continue
        box = boxes[v.instance - 1]
        voxels = np.argwhere(result.instances[box] == v.instance) + np.array([s.start for s in box])
        if len(voxels) < 10:
            continue
        along = (result.image.kji_to_ras(voxels) - points[n]) @ vertebra_frame(points, n)[:, 2]
        low, high = np.percentile(along, [2, 98])
        heights[n] = high - low
    return heights


def c2_evidence(points: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """(N,) P(axis) for cranio-caudally ordered bodies: one of the top two is C2 when it is clearly the
    tallest of the cervical-sized bodies below it; NaN (no information) elsewhere."""
    out = np.full(len(points), np.nan)
    for n in (0, 1):
        below = heights[n + 1:n + 4]
        below = below[np.isfinite(below)]
        if n >= len(points) or not np.isfinite(heights[n]) or len(below) < 2:
            continue
        steps = np.linalg.norm(np.diff(points[n:n + 4], axis=0), axis=1)
        if np.median(steps) < CERVICAL_STEP_MM and heights[n] >= C2_HEIGHT_RATIO * np.median(below):
            out[n] = 0.9
            break
    return out


def gather_evidence(result) -> None:
    """Fill `Vertebra.evidence` of a detected result: ribs (CT, `ribs`), the sacrum from the detector's S1
    score when it is sure (>= 0.5: a positive sighting; a low score is not taken as proof of absence, the
    detector may not know the sacrum) combined with the discs on MRI (`sacrum`: a disc above, none below,
    bone below; a clear disc below says "not S1"), C2 from the body heights (independent of the detector's
    C2 score, which the assignment already weighs). Vertebrae must be cranio-caudally sorted."""
    from .ribs import rib_evidence
    from .sacrum import combine

    vertebrae = result.vertebrae
    if not vertebrae:
        return
    points = np.array([v.centroid_ras for v in vertebrae]).reshape(-1, 3)
    ribs = np.full(len(points), np.nan)
    if result.image is not None:
        # A spurious detection (e.g. a rib head beside the column) would tilt its neighbours' frames.
        column = ~spurious_points(points)
        ribs[column] = rib_evidence(result.image, points[column], result.modality)
    axis = c2_evidence(points, body_heights_mm(result))
    discs = disc_sacrum_evidence(result)
    for n, v in enumerate(vertebrae):
        scores = v.level_scores or {}
        sacrum = combine(scores.get("S1", 0.0), discs[n])
        c2 = 0.0 if np.isnan(axis[n]) else float(axis[n])
        v.evidence = {"rib": None if np.isnan(ribs[n]) else float(ribs[n]),
                      "sacrum": None if sacrum is None else float(sacrum),
                      "c2": float(c2) if c2 >= PRESENT else None}
        if np.isfinite(discs[n]):
            v.evidence["sacrum_discs"] = float(discs[n])     # its share of "sacrum" (`naming.sacrum.disc_decided`)


def spurious_points(points: np.ndarray) -> np.ndarray:
    """The points the labelling will judge spurious by geometry (`labelling.order_along_spine`)."""
    from .labelling import order_along_spine

    return order_along_spine(points)[1] if len(points) >= 4 else np.zeros(len(points), bool)


def disc_sacrum_evidence(result) -> np.ndarray:
    """(N,) P(S1) per vertebra from the disc map drawn before naming (`stages.disc_map`, MRI); NaN
    without one, or when the vertebrae are no longer the bodies it was drawn for."""
    from .sacrum import findings_of, sacrum_evidence

    out = np.full(len(result.vertebrae), np.nan)
    drawn = result.notes.get("disc_map") or {}
    masked = [n for n, v in enumerate(result.vertebrae) if v.instance]
    if not drawn or [result.vertebrae[n].instance for n in masked] != drawn.get("instances"):
        return out
    evidence = sacrum_evidence(findings_of(result, np.array(drawn["disc_mm3"], float)))
    out[masked] = evidence
    drawn["sacrum"] = [None if np.isnan(p) else round(float(p), 3) for p in evidence]
    return out
