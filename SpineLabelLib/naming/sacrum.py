"""Sacrum evidence on MRI from the discs: the first sacral segment has a disc above it and bone below.

Every free lumbar vertebra has a disc below it (L5 has the L5-S1 disc). The first sacral segment has the
L5-S1 disc above it but only bone below it (S1-S2 is fused: at most a thin remnant of a disc), and the
sacrum continues inferiorly and posteriorly. So, for the bodies found (cranio-caudally ordered):
  - the lowest body with a clear disc above it, no disc where its disc below would be although the image
    continues well below it, and tissue like its own below it, is probably S1 (the clearer the signs,
    the higher the probability);
  - a body with a clear disc below it is probably not S1;
  - the lowest body where the field of view ends within `ROOM_MM` of its lower edge gets no information
    (NaN): a scan that stops at L5 must not look like a sacrum because nothing is seen below.
Discs come from the disc segmenter's map before naming (`stages.disc_map`): between neighbouring bodies,
and at a probe site below the lowest body, where its disc below would be. A disc counts by its volume
against the median disc of this scan (a young volunteer's discs and an old patient's differ, a remnant is
a fraction of either).

The detector's own S1 score is combined in `combine` (odds multiplied, an absent or low detector score
meaning "no information": a detector trained without the sacrum scores it 0 everywhere).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the image must continue this far (mm) below the lowest body's lower edge, along the column, to judge
#: what is below it (the next disc and a good part of the next segment)
ROOM_MM = 30.0
#: a disc of this share of the scan's median disc volume is clear; at or below NO_DISC it is absent. A young
#: adult's rudimentary S1-S2 disc is drawn up to about a quarter of a lumbar disc (ivd-11: 0.25 with the
#: disc model that never saw that case; 0.15 was the first choice and took it for a disc)
CLEAR_DISC, NO_DISC = 0.5, 0.25
#: tissue below a body, against the body's own median intensity, still counts as bone in this ratio range
BONE_RATIO = (0.55, 1.8)
P_SACRUM_MAX = 0.97       # all signs clear
P_NOT_SACRUM = 0.08       # a clear disc below


@dataclass
class DiscFindings:
    """What the disc map says about cranio-caudally ordered bodies (N of them).

    disc_mm3: (N,) volume of the disc found below each body (the last entry: at the probe site below the
    lowest body; NaN = not examined). room_below_mm: how far the image continues below the lowest body's
    lower edge along the column. bone_below: 0..1, share of the tissue below the lowest body that looks
    like its own (NaN when not measured)."""

    disc_mm3: np.ndarray
    room_below_mm: float
    bone_below: float = np.nan


def clarity(volume_mm3: float, reference_mm3: float) -> float:
    """0 (no disc) .. 1 (a clear disc) from a disc's volume against the scan's median disc."""
    if not np.isfinite(volume_mm3) or not np.isfinite(reference_mm3) or reference_mm3 <= 0:
        return np.nan
    return float(np.clip((volume_mm3 / reference_mm3 - NO_DISC) / (CLEAR_DISC - NO_DISC), 0.0, 1.0))


def sacrum_evidence(findings: DiscFindings) -> np.ndarray:
    """(N,) P(first sacral segment) per body from the discs; NaN where they say nothing.

    Only the lowest body can be the sacrum here: the discs must stop at it (a clear disc above it, none
    at the probe below it) with the image going on below it for `ROOM_MM` and looking like bone. A body
    between two others without a disc below it is a disc the model missed (or an S2 found as a body),
    not evidence: the detector rarely finds S2, and a missed lumbar disc must not make an S1."""
    discs = np.asarray(findings.disc_mm3, float)
    n = len(discs)
    out = np.full(n, np.nan)
    between = discs[:-1][np.isfinite(discs[:-1]) & (discs[:-1] > 0)]
    if n < 2 or len(between) == 0:
        return out                                 # no disc between two bodies: the map says nothing here
    reference = float(np.median(between))
    below = np.array([clarity(v, reference) for v in discs])
    clear = np.nan_to_num(below, nan=0.0) > 0.5
    out[clear] = 0.5 - (0.5 - P_NOT_SACRUM) * below[clear]
    last = n - 1
    if clear[last] or not np.isfinite(below[last]) or not np.isfinite(below[last - 1]):
        return out                                 # a disc below the lowest body: it is a free vertebra
    if findings.room_below_mm < ROOM_MM:
        return out                                 # the field of view ends at it: no information
    bone = findings.bone_below if np.isfinite(findings.bone_below) else 0.5
    strength = below[last - 1] * (1.0 - below[last]) * bone
    if strength > 0.2:
        out[last] = 0.5 + (P_SACRUM_MAX - 0.5) * min(1.0, strength / 0.8)
    return out


def combine(detector_s1: float | None, discs: float) -> float | None:
    """One P(S1) from the detector's score (used when >= 0.5: a sighting) and the disc evidence (NaN =
    none): odds multiplied, as independent evidence against an even prior."""
    parts = [p for p in (detector_s1, discs) if p is not None and np.isfinite(p)]
    if detector_s1 is not None and detector_s1 < 0.5:
        parts = [p for p in parts if p is not detector_s1]
    if not parts:
        return None
    q = np.clip(np.array(parts, float), 1e-3, 1 - 1e-3)
    odds = float(np.prod(q / (1 - q)))
    return odds / (1 + odds)


# --- geometry of the lowest body: where its disc below would be, how far the image goes -------------
def column_direction(points: np.ndarray) -> np.ndarray:
    """Unit vector down the column at its lowest body (from the body above to it)."""
    step = points[-1] - points[-2]
    return step / max(np.linalg.norm(step), 1e-6)


def lower_edge_mm(image, mask_kji: np.ndarray, centre: np.ndarray, down: np.ndarray) -> float:
    """How far the body's mask reaches below its centroid along ``down`` (98th percentile, mm)."""
    if len(mask_kji) < 10:
        return np.nan
    return float(np.percentile((image.kji_to_ras(mask_kji) - centre) @ down, 98))


def probe_centre(points: np.ndarray) -> np.ndarray:
    """Where the disc below the lowest body would be: half a step below it, as the disc above is half a
    step above it."""
    step = points[-1] - points[-2]
    return points[-1] + 0.5 * step


def room_below_mm(image, start: np.ndarray, down: np.ndarray, limit_mm: float = 80.0) -> float:
    """How far the image continues from ``start`` along ``down`` (mm, up to ``limit_mm``)."""
    distances = np.arange(0.0, limit_mm + 0.5, 1.0)
    kji = image.ras_to_kji(start[None, :] + distances[:, None] * down[None, :])
    inside = np.all((kji >= -0.5) & (kji <= np.array(image.array.shape) - 0.5), axis=1)
    if not inside[0]:
        return 0.0
    return float(distances[np.argmin(inside)] if not inside.all() else limit_mm)


def bone_below(image, body_values: np.ndarray, start: np.ndarray, down: np.ndarray,
               anterior: np.ndarray, span_mm=(5.0, 25.0)) -> float:
    """Share of samples below the body (from ``span_mm[0]`` to ``span_mm[1]`` beyond its lower edge,
    straight down and bent posteriorly, as the sacrum curves back) whose intensity is within
    `BONE_RATIO` of the body's own median: the next segment's bone, not fat, gut or air."""
    from scipy import ndimage

    level = float(np.median(body_values)) if len(body_values) else np.nan
    if not np.isfinite(level) or level <= 0:
        return np.nan
    best = 0.0
    depth = np.arange(span_mm[0], span_mm[1] + 0.5, 1.0)
    for tilt in (0.0, 0.4, 0.8):                   # posterior drift per mm down (0 .. ~40 degrees)
        for offset in (-4.0, 0.0, 4.0):            # across the body's depth
            ras = (start[None, :] + depth[:, None] * down[None, :]
                   - (tilt * depth[:, None] + offset) * anterior[None, :])
            kji = image.ras_to_kji(ras)
            inside = np.all((kji >= 0) & (kji <= np.array(image.array.shape) - 1), axis=1)
            if inside.mean() < 0.8:
                continue
            values = ndimage.map_coordinates(image.array.astype(np.float32), kji[inside].T, order=1)
            ratio = values / level
            best = max(best, float(np.mean((ratio >= BONE_RATIO[0]) & (ratio <= BONE_RATIO[1]))))
    return best


def findings_of(result, disc_mm3: np.ndarray) -> DiscFindings:
    """`DiscFindings` of a result's cranio-caudally ordered vertebrae with the disc volumes measured on
    its disc map (`stages.disc_map`): the image geometry below the lowest body added here."""
    vertebrae = [v for v in result.vertebrae if v.instance]
    points = np.array([v.centroid_ras for v in vertebrae]).reshape(-1, 3)
    if len(points) < 2:
        return DiscFindings(np.asarray(disc_mm3, float), 0.0)
    down = column_direction(points)
    lowest = vertebrae[-1]
    voxels = np.argwhere(result.instances == lowest.instance)
    edge = lower_edge_mm(result.image, voxels, points[-1], down)
    if not np.isfinite(edge):
        return DiscFindings(np.asarray(disc_mm3, float), 0.0)
    start = points[-1] + edge * down
    anterior = np.array([0.0, 1.0, 0.0]) - down[1] * down
    anterior = anterior / max(np.linalg.norm(anterior), 1e-6)
    values = result.image.array[tuple(voxels.T)]
    return DiscFindings(np.asarray(disc_mm3, float), room_below_mm(result.image, start, down),
                        bone_below(result.image, values, start, down, anterior))


# --- when the discs alone decided the naming ---------------------------------------------------------
DISC_DECIDED_MESSAGE = ("levels uncertain: counted from a sacrum seen by its discs (a disc above the lowest body, "
                        "none below it); a collapsed L5-S1 disc looks the same — check one level and use Set level")


def disc_decided(result, params=None) -> bool:
    """Whether the naming differs from the one without the disc sign of the sacrum (the detector's S1
    score alone): then the count rests on that sign, which a collapsed or dark (degenerated) L5-S1 disc
    the disc model does not see would give too, and the naming is flagged uncertain."""
    from dataclasses import replace

    from .labelling import DEFAULT_PARAMS, relabel_vertebrae

    if not any(v.evidence and v.evidence.get("sacrum_discs") is not None for v in result.vertebrae):
        return False
    without = []
    for v in result.vertebrae:
        evidence = dict(v.evidence or {})
        if evidence.pop("sacrum_discs", None) is not None:
            evidence["sacrum"] = combine((v.level_scores or {}).get("S1", 0.0), np.nan)
        without.append(replace(v, evidence=evidence))
    return relabel_vertebrae(without, params or DEFAULT_PARAMS) != result.levels
