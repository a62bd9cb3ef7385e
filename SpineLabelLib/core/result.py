"""`SpineResult`: the one type that carries a case through every stage.

Voxel results are named layers on the image grid (`LAYERS`): the vertebral bodies, as one
instance map (value = `Vertebra.instance`), so renaming a vertebra never touches voxels, and the
intervertebral discs, valued by the instance of the vertebra above each (`core.disc_layer`); the
level-code and disc label maps are derived on demand. What a stage reports about its own work (the detector's
slab, say) goes into `notes` under the stage's name; a phantom's analytic answer into `truth`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import anatomy
from .volume import Volume

SOURCES = ("detector", "manual", "phantom", "truth", "file")
#: voxel layers a result can hold, each an instance map on the image grid
BODIES = "bodies"
DISCS = "discs"        # valued by the instance of the vertebra above each disc (core.disc_layer)
LAYERS = (BODIES, DISCS)


@dataclass
class Vertebra:
    """One vertebra: its level name ('' when unknown), body centroid in RAS mm, and provenance."""

    level: str
    centroid_ras: np.ndarray
    instance: int = 0                 # value in SpineResult.instances; 0 = no mask
    score: float = 1.0                # detector confidence 0..1 (1 for person-given)
    source: str = "detector"
    locked: bool = False              # a person's statement: software never changes it
    level_scores: dict[str, float] | None = None   # per-level probabilities from the detector
    evidence: dict[str, float | None] | None = None  # anatomical anchors: P(rib), P(sacrum), P(C2) (see anchors)

    def __post_init__(self) -> None:
        self.centroid_ras = np.asarray(self.centroid_ras, dtype=float).reshape(3)
        if self.level and self.level not in anatomy.CODE_BY_NAME:
            raise ValueError(f"unknown vertebral level {self.level!r}")

    @property
    def code(self) -> int:
        return anatomy.code_of(self.level) if self.level else 0


@dataclass
class SpineResult:
    """A case: the image, vertebrae, their body masks, and everything later stages add."""

    case_id: str
    image: Volume | None = None
    vertebrae: list[Vertebra] = field(default_factory=list)
    layers: dict[str, np.ndarray] = field(default_factory=dict)   # name -> (k, j, i) uint16 on the image grid
    modality: str = "unknown"                  # 'ct' | 'mr' | 'unknown'
    input_path: str = ""
    input_sha256: str = ""
    models: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    distances: list[dict[str, Any]] = field(default_factory=list)
    disc_measurements: list[dict[str, Any]] = field(default_factory=list)   # measurement.discs, one row per disc
    corrections: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)            # stage name -> what it reports
    naming: dict[str, Any] = field(default_factory=dict)           # confidence, uncertain, reason (naming.confidence)
    alignment: dict[str, Any] = field(default_factory=dict)        # alignment.measure_alignment: endplates, measures
    truth: dict[str, Any] | None = None                            # a phantom's analytic answer
    view: Any = field(default=None, repr=False, compare=False)     # core.canonical.CanonicalView, per run

    def __post_init__(self) -> None:
        if not isinstance(self.layers, dict):      # a bare instance map is the body layer
            self.layers = {} if self.layers is None else {BODIES: self.layers}

    @property
    def instances(self) -> np.ndarray | None:
        """The vertebral-body layer: (k, j, i) uint16 on the image grid, 0 = background."""
        return self.layers.get(BODIES)

    @instances.setter
    def instances(self, value: np.ndarray | None) -> None:
        if value is None:
            self.layers.pop(BODIES, None)
        else:
            self.layers[BODIES] = value

    def canonical_view(self):
        """The case's canonical sagittal view (created on first use, shared by every stage)."""
        from .canonical import CanonicalView

        if self.view is None or self.view.volume is not self.image or self.view.modality != self.modality:
            self.view = CanonicalView(self.image, self.modality)
        return self.view

    # --- access ---------------------------------------------------------------------------
    def by_level(self, level: str) -> Vertebra | None:
        return next((v for v in self.vertebrae if v.level == level), None)

    def by_instance(self, instance: int) -> Vertebra | None:
        return next((v for v in self.vertebrae if v.instance == instance), None)

    @property
    def levels(self) -> list[str]:
        return [v.level for v in self.vertebrae]

    def mask(self, vertebra: Vertebra) -> np.ndarray:
        """Boolean body mask of one vertebra on the image grid (all False without a mask)."""
        if self.instances is None or vertebra.instance == 0:
            shape = self.image.array.shape if self.image is not None else (1, 1, 1)
            return np.zeros(shape, dtype=bool)
        return self.instances == vertebra.instance

    def sort_cranio_caudal(self) -> None:
        """Order vertebrae head to feet by their superior (S) coordinate."""
        self.vertebrae.sort(key=lambda v: -v.centroid_ras[2])

    def next_instance(self) -> int:
        used = [v.instance for v in self.vertebrae]
        if self.instances is not None and self.instances.size:
            used.append(int(self.instances.max()))
        return max(used, default=0) + 1

    # --- derived maps ---------------------------------------------------------------------
    def level_map(self) -> np.ndarray:
        """(k, j, i) label map of level codes (0 background; unlabelled vertebrae are dropped)."""
        if self.instances is None:
            raise ValueError("this result has no body masks")
        lookup = np.zeros(int(self.instances.max()) + 1, dtype=np.uint8)
        for v in self.vertebrae:
            if v.instance and v.level and v.instance < lookup.size:
                lookup[v.instance] = v.code
        return lookup[self.instances]

    def level_volume(self) -> Volume:
        if self.image is None:
            raise ValueError("this result has no image grid")
        return self.image.with_array(self.level_map())

    def record(self, action: str, **details: Any) -> None:
        """Append to the correction record (what a person changed), kept for export."""
        self.corrections.append({"action": action, **details})

    @classmethod
    def from_level_map(cls, case_id: str, image: Volume, level_map: np.ndarray,
                       source: str = "file", **kwargs) -> "SpineResult":
        """Build a result from a label map of level codes: one vertebra per code present."""
        if level_map.shape != image.array.shape:
            raise ValueError(f"label map shape {level_map.shape} differs from image {image.array.shape}")
        codes = [int(c) for c in np.unique(level_map) if c != 0]
        instances = np.zeros(level_map.shape, dtype=np.uint16)
        vertebrae = []
        for n, code in enumerate(codes, start=1):
            voxels = np.argwhere(level_map == code)
            instances[tuple(voxels.T)] = n
            centroid = image.kji_to_ras(voxels.mean(axis=0))[0]
            vertebrae.append(Vertebra(anatomy.name_of(code), centroid, instance=n, source=source))
        result = cls(case_id, image, vertebrae, {BODIES: instances}, **kwargs)
        result.sort_cranio_caudal()
        return result

    def recompute_centroids(self) -> None:
        """Centroids from the body masks (after a person edits a mask); maskless ones stay."""
        if self.instances is None or self.image is None:
            return
        from scipy import ndimage

        ids = [v.instance for v in self.vertebrae if v.instance]
        if not ids:
            return
        centres = ndimage.center_of_mass(np.ones(self.instances.shape, np.uint8), self.instances, ids)
        for v, centre in zip([v for v in self.vertebrae if v.instance], centres):
            if not np.any(np.isnan(centre)):
                v.centroid_ras = self.image.kji_to_ras(np.array(centre))[0]


# --- a pickle-free snapshot, for handing a result between processes --------------------------
_JSON_FIELDS = ("case_id", "modality", "input_path", "input_sha256", "models", "timings", "warnings",
                "measurements", "distances", "disc_measurements", "corrections", "notes", "truth", "naming", "alignment")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a result snapshot")


def save_snapshot(result: SpineResult, path) -> None:
    """Arrays into an .npz (no pickled objects), everything else as JSON inside it."""
    import json

    fields = {name: getattr(result, name) for name in _JSON_FIELDS}
    fields["vertebrae"] = [
        {"level": v.level, "centroid_ras": v.centroid_ras, "instance": v.instance, "score": v.score,
         "source": v.source, "locked": v.locked, "level_scores": v.level_scores, "evidence": v.evidence}
        for v in result.vertebrae]
    arrays = {"fields": np.frombuffer(json.dumps(fields, default=_jsonable).encode("utf-8"), dtype=np.uint8)}
    if result.image is not None:
        arrays.update(image=result.image.array, ijk_to_ras=result.image.ijk_to_ras)
    arrays.update({f"layer_{name}": layer for name, layer in result.layers.items()})
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def load_snapshot(path) -> SpineResult:
    import json

    with np.load(path, allow_pickle=False) as data:
        fields = json.loads(data["fields"].tobytes().decode("utf-8"))
        image = Volume(data["image"], data["ijk_to_ras"]) if "image" in data else None
        layers = {key[len("layer_"):]: data[key] for key in data.files if key.startswith("layer_")}
    vertebrae = [Vertebra(**v) for v in fields.pop("vertebrae")]
    return SpineResult(image=image, layers=layers, vertebrae=vertebrae, **fields)
