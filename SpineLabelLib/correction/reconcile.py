"""What a person did in the views, as a new `SpineResult`: pure engine code, no MRML.

The Slicer adapter (`slicer_adapter.scene`) reads the point list and the segmentation into plain
records (`SceneRecords`); `reconcile` turns them into a result and says which segments need a new
instance tag, and the adapter writes those tags back. Rules:

- A point and a segment belong to the same vertebra when the point's description names the segment's
  instance tag (``instance=3``), else when the point's label equals the segment's name.
- A segment without a point becomes a vertebra whose centroid is its mask's centre; a point without a
  segment is a vertebra without a mask.
- Instance numbers are kept from the segment tags when free, so a relabelled point keeps its mask and
  the correction record can pair bodies; new bodies get numbers never used by the previous result.
- The difference to the previous result (`edits.diff_results`) goes into the new result's record.
- Discs follow their vertebrae (`core.disc_layer`: a disc's voxels carry the instance of the vertebra
  above). A disc segment (named "L4-L5", or tagged with its upper vertebra's instance) becomes disc
  voxels of that vertebra, so painting a disc changes its row at the next measurement; without disc
  segments in the scene the previous disc layer is carried. Relabelling a vertebra renames the discs
  next to it; deleting one hands its disc to the vertebra above it (the two discs around a spurious
  body merge), and a disc left without a neighbour below or above is removed.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..core import anatomy, discs
from ..core.disc_layer import drop_orphans
from ..core.result import DISCS, SpineResult, Vertebra
from ..core.volume import Volume
from ..io import point_description
from .edits import diff_results

#: fields of the result rebuilt from the scene (or, for the per-run canonical view, left to be rebuilt);
#: every other field, other voxel layers included, is carried over from the previous result
_FROM_SCENE = ("case_id", "image", "vertebrae", "layers", "measurements", "distances", "disc_measurements", "view")


@dataclass(frozen=True)
class PointRecord:
    """A defined control point: label, position (RAS mm), lock, description text."""

    label: str
    ras: np.ndarray
    locked: bool = False
    description: str = ""


@dataclass(frozen=True)
class SegmentRecord:
    """A segment: id, name, label value and the ``SpineLabel.Instance`` tag (0 when absent)."""

    id: str
    name: str
    label_value: int = 0
    instance: int = 0
    disc_upper: int = 0        # ``SpineLabel.DiscUpper`` tag: instance of the vertebra above a disc

    @property
    def level(self) -> str:
        return self.name if self.name in anatomy.CODE_BY_NAME else ""

    @property
    def is_disc(self) -> bool:
        return bool(self.disc_upper) or discs.is_disc_name(self.name)


@dataclass
class SceneRecords:
    """A case as the views show it. ``segment_map`` (k, j, i) on the image grid holds 1-based positions
    in ``segments`` (0 = no segment), so segment n's voxel mask is ``segment_map == n + 1``."""

    image: Volume
    points: list[PointRecord] = field(default_factory=list)
    segments: list[SegmentRecord] = field(default_factory=list)
    segment_map: np.ndarray | None = None

    def mask(self, index: int) -> np.ndarray:
        return self.segment_map == index + 1


@dataclass(frozen=True)
class Reconciled:
    result: SpineResult
    instance_tags: dict[str, int]          # segment id -> instance number to tag it with (changed ones only)


@dataclass
class _Draft:
    """A vertebra being built, with the segment it owns (index into the records, None without one)."""

    vertebra: Vertebra
    segment: int | None
    from_segment: bool = False            # made from a painted segment: centroid from its mask


def reconcile(records: SceneRecords, previous: SpineResult | None = None) -> Reconciled:
    """The scene's content as a new result, with the changes against ``previous`` recorded (origin 'scene')."""
    segment_map = records.segment_map
    if segment_map is None:
        segment_map = np.zeros(records.image.array.shape, np.uint16)
    disc_segments = {n for n, s in enumerate(records.segments) if s.is_disc}
    drafts, claimed = link_points(records.points, records.segments, disc_segments)
    drafts += unlinked_segments(records.segments, claimed | disc_segments, drafts)
    instances = renumber(segment_map, records.segments, drafts, previous)
    tags = {records.segments[d.segment].id: d.vertebra.instance for d in drafts
            if d.segment is not None and d.vertebra.instance
            and records.segments[d.segment].instance != d.vertebra.instance}
    result = _new_result(previous, records.image, _finished(drafts, instances, records.image), instances)
    carry_detector_facts(result, previous)
    reconcile_discs(result, previous, records, segment_map, sorted(disc_segments))
    if previous is not None:
        for change in diff_results(previous, result):
            result.record(change.pop("action"), **change, origin="scene")
    return Reconciled(result, tags)


def link_points(points: list[PointRecord], segments: list[SegmentRecord],
                skip: set[int] = frozenset()) -> tuple[list[_Draft], set[int]]:
    """A vertebra per point, each with the segment it names by instance tag, else by level name
    (segments in ``skip``, the discs, belong to no point)."""
    by_instance: dict[int, int] = {}
    for n, segment in enumerate(segments):      # a copied segment keeps the tag: the first one is the original
        if segment.instance and n not in skip:
            by_instance.setdefault(segment.instance, n)
    claimed: set[int] = set()
    drafts = []
    for point in points:
        described = point_description.decode(point.description)
        segment = by_instance.get(described.instance) if described.instance else None
        if segment is None or segment in claimed:
            segment = next((n for n, s in enumerate(segments)
                            if n not in claimed and n not in skip and point.label and s.level == point.label), None)
        level = point.label if point.label in anatomy.CODE_BY_NAME else ""
        vertebra = Vertebra(level, point.ras, instance=0,
                            score=1.0 if described.score is None else described.score,
                            source=described.source or "manual", locked=point.locked)
        if segment is not None:
            claimed.add(segment)
        drafts.append(_Draft(vertebra, segment))
    return drafts, claimed


def unlinked_segments(segments: list[SegmentRecord], claimed: set[int], drafts: list[_Draft]) -> list[_Draft]:
    """A segment a person painted without a point: a new vertebra (its level unless a point has it)."""
    taken = {d.vertebra.level for d in drafts if d.vertebra.level}
    out = []
    for n, segment in enumerate(segments):
        if n in claimed:
            continue
        level = segment.level if segment.level not in taken else ""
        taken.add(level)
        out.append(_Draft(Vertebra(level, np.zeros(3), instance=0, score=1.0, source="manual"), n,
                          from_segment=True))
    return out


def renumber(segment_map: np.ndarray, segments: list[SegmentRecord], drafts: list[_Draft],
             previous: SpineResult | None) -> np.ndarray:
    """The instance map; sets each draft's instance (0 when its segment is missing or empty).

    A segment's tag is kept when no earlier vertebra took it; other bodies get numbers above every
    tag and every number of the previous result, so a new body is never mistaken for an old one."""
    kept: dict[int, int] = {}                       # draft index -> instance kept from its segment's tag
    for n, draft in enumerate(drafts):
        tag = segments[draft.segment].instance if draft.segment is not None else 0
        if tag and tag not in kept.values():
            kept[n] = tag
    next_free = max(set(kept.values()) | {previous.next_instance() - 1 if previous else 0}) + 1
    voxels = np.bincount(segment_map.ravel(), minlength=len(segments) + 1)
    lookup = np.zeros(len(segments) + 1, dtype=np.uint16)
    for n, draft in enumerate(drafts):
        position = draft.segment + 1 if draft.segment is not None else 0
        if not position or not voxels[position]:
            draft.vertebra.instance = 0
            continue
        if n not in kept:
            kept[n] = next_free
            next_free += 1
        draft.vertebra.instance = kept[n]
        lookup[position] = kept[n]
    return lookup[segment_map]


def _finished(drafts: list[_Draft], instances: np.ndarray, image: Volume) -> list[Vertebra]:
    """The vertebrae; one made from a segment gets its mask's centre, or is dropped when the mask is empty."""
    from scipy import ndimage

    out = []
    for draft in drafts:
        vertebra = draft.vertebra
        if draft.from_segment:
            if not vertebra.instance:
                continue
            centre = ndimage.center_of_mass(instances == vertebra.instance)
            vertebra.centroid_ras = image.kji_to_ras(np.array(centre))[0]
        out.append(vertebra)
    return out


def reconcile_discs(result: SpineResult, previous: SpineResult | None, records: SceneRecords,
                    segment_map: np.ndarray, disc_segments: list[int]) -> None:
    """The disc layer of the new result (see the module docstring for the rules)."""
    if disc_segments:
        layer = np.zeros(segment_map.shape, np.uint16)
        present = {v.instance for v in result.vertebrae if v.instance}
        for n in disc_segments:
            segment = records.segments[n]
            upper = segment.disc_upper if segment.disc_upper in present else 0
            if not upper and discs.is_disc_name(segment.name):
                named = result.by_level(discs.split_name(segment.name)[0])
                upper = named.instance if named is not None else 0
            if upper:
                layer[segment_map == n + 1] = upper
        result.layers[DISCS] = layer
    elif previous is not None and DISCS in previous.layers and previous.layers[DISCS].shape == segment_map.shape:
        result.layers[DISCS] = previous.layers[DISCS].copy()
    else:
        return
    hand_up_discs_of_deleted(result, previous)
    drop_orphans(result)


def hand_up_discs_of_deleted(result: SpineResult, previous: SpineResult | None) -> None:
    """A disc whose upper vertebra is gone goes to the nearest previous vertebra above that is still
    there (merging with that vertebra's own disc), or is removed when there is none."""
    layer = result.layers[DISCS]
    present = {v.instance for v in result.vertebrae if v.instance}
    gone = [int(v) for v in np.unique(layer) if v and int(v) not in present]
    if not gone:
        return
    order = [v.instance for v in sorted(previous.vertebrae, key=lambda v: -v.centroid_ras[2])] if previous else []
    for value in gone:
        above = order[:order.index(value)] if value in order else []
        heir = next((i for i in reversed(above) if i in present), 0)
        layer[layer == value] = heir


def carry_detector_facts(result: SpineResult, previous: SpineResult | None) -> None:
    """Level scores and anchor evidence are not in the scene: keep them from the previous result for
    the vertebrae that are still the same body (same instance), so a relabelling after a person's
    correction still weighs the sacrum, C2 and the ribs."""
    if previous is None:
        return
    by_instance = {v.instance: v for v in previous.vertebrae if v.instance}
    for v in result.vertebrae:
        before = by_instance.get(v.instance) if v.instance else None
        if before is not None:
            v.level_scores = v.level_scores or before.level_scores
            v.evidence = v.evidence or before.evidence


def _new_result(previous: SpineResult | None, image: Volume, vertebrae: list[Vertebra],
                instances: np.ndarray) -> SpineResult:
    """A result with the scene's content and the previous one's case facts (id, input, models, record).

    Measurements, distances and disc measurements start empty: the edits may have changed every body
    and disc they describe."""
    if previous is None:
        from ..core.paths import safe_name

        result = SpineResult(safe_name(image.metadata.get("name", "")), image=image, vertebrae=vertebrae)
    else:
        carried = {f.name: copy.deepcopy(getattr(previous, f.name)) for f in dataclasses.fields(previous)
                   if f.name not in _FROM_SCENE}
        result = SpineResult(previous.case_id, image=image, vertebrae=vertebrae, **carried)
    result.instances = instances
    return result
