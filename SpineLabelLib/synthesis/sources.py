"""The real spine data we have, read into (image or None, label map in VerSe codes) pairs.

Every reader says what its labels are: whole vertebrae (to be cut to bodies, `bodies.body_masks`)
or bodies. Paths are relative to a data root (the project's benchmark data folder, laid out as its README says); nothing
here is needed at run time or by the unit tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import anatomy
from ..core.volume import Volume, load_volume

#: TotalSegmentator v2 "total" vertebra values -> VerSe codes (26 S1, 27 L5 ... 50 C1).
TOTALSEG_VERTEBRAE = {26: anatomy.code_of("S1"), **{27 + n: anatomy.code_of(name) for n, name in
                                                   enumerate(reversed(anatomy.STANDARD_ORDER[:-1]))}}
TOTALSEG_SACRUM = 25


@dataclass
class Source:
    name: str                      # e.g. "verse009", "totalseg-example", "lidc-0001"
    image: Volume | None           # None: a label map whose image we do not have
    labels: Volume                 # VerSe codes
    whole_vertebrae: bool          # True: body + posterior elements (cut with bodies.body_masks)
    modality: str                  # "ct" or "mr"
    extra: dict | None = None      # boolean masks (ribs, sacrum, lungs, organs) on the labels' grid
    licence: str = ""


def totalseg_to_verse(array: np.ndarray) -> np.ndarray:
    lookup = np.zeros(256, np.uint8)
    for value, code in TOTALSEG_VERTEBRAE.items():
        lookup[value] = code
    return lookup[np.clip(array, 0, 255).astype(np.int64)]


def verse_label_maps(root: Path) -> list[Source]:
    """VerSe whole-vertebra masks without images (labelmaps/verse, ct/verse004)."""
    files = [("verse009", root / "labelmaps/verse/sub-verse009_seg-vert_msk.nii.gz"),
             ("verse010", root / "labelmaps/verse/sub-verse010_seg-vert_msk.nii.gz"),
             ("verse004", root / "ct/verse004/sub-verse004_seg-vert_msk.nii.gz")]
    out = []
    for name, path in files:
        labels = load_volume(path)
        out.append(Source(name, None, labels.with_array(np.round(labels.array).astype(np.uint8)), True, "ct",
                          licence="VerSe, CC BY-SA 4.0"))
    return out


def totalseg_example(root: Path) -> Source:
    """TotalSegmentator's example abdomen CT with its own predicted vertebrae T11-S1 (whole
    vertebrae; S1 is TotalSegmentator's first sacral segment)."""
    folder = root / "ct/totalsegmentator"
    labels = load_volume(folder / "totalseg.nii.gz")
    return Source("totalseg-example", load_volume(folder / "example_ct.nii.gz"),
                  labels.with_array(totalseg_to_verse(labels.array)), True, "ct",
                  licence="TotalSegmentator repository tests, Apache-2.0 (labels are model output)")


def lidc(root: Path) -> Source:
    """LIDC-IDRI chest CT with TotalSegmentator v2 output: vertebrae C5-L3 (VerSe codes in _vert),
    ribs, lungs and organs in _totalseg (structure ids in the csv)."""
    import csv

    folder = root / "ct/lidc-0001"
    vert = load_volume(folder / "lidc-0001_vert.nii.gz")
    structures = load_volume(folder / "lidc-0001_totalseg.nii.gz").array
    groups: dict[str, list[int]] = {"ribs": [], "lungs": [], "organs": [], "sacrum": []}
    with open(folder / "lidc-0001_totalseg_structures.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            name, value = row["structure"], int(row["id"])
            if name.startswith("rib_") or name == "sternum" or name.startswith("costal"):
                groups["ribs"].append(value)
            elif name.startswith("lung_"):
                groups["lungs"].append(value)
            elif name == "sacrum":
                groups["sacrum"].append(value)
            elif row["group"] == "organs":
                groups["organs"].append(value)
    extra = {k: np.isin(structures, v) for k, v in groups.items() if v and np.isin(structures, v).any()}
    return Source("lidc-0001", load_volume(folder / "lidc-0001_ct.nii.gz"),
                  vert.with_array(np.round(vert.array).astype(np.uint8)), True, "ct", extra,
                  licence="LIDC-IDRI CC BY 3.0 (labels are TotalSegmentator output)")


def verse012(root: Path) -> Source:
    folder = root / "ct/verse012"
    labels = load_volume(folder / "sub-verse012_seg-vert_msk.nii.gz")
    return Source("verse012", load_volume(folder / "sub-verse012_ct.nii.gz"),
                  labels.with_array(np.round(labels.array).astype(np.uint8)), True, "ct",
                  licence="VerSe 2019, CC BY-SA 4.0 (manual labels)")


def disc_mri(root: Path) -> list[Source]:
    """The disc MRI (third site): bodies L1..S1 derived from the manual disc masks
    (`bodies.bodies_between_discs`), on the image grid."""
    from ..core.volume import resample, resample_to_canonical
    from .bodies import bodies_between_discs

    out = []
    for path in sorted((root / "mri-discs").glob("ivd-*_discs.nii.gz")):
        name = path.name[: -len("_discs.nii.gz")]
        image = load_volume(root / "mri-discs" / f"{name}_mri.nii.gz")
        discs = load_volume(path)
        discs = discs.with_array(np.round(discs.array).astype(np.uint8))
        canonical = resample_to_canonical(discs, 1.0, label=True)
        bodies = canonical.with_array(bodies_between_discs(canonical.array, 1.0))
        labels = resample(bodies, None, reference=image, label=True)
        out.append(Source(name, image, labels, False, "mr", {"discs": discs.array > 0},
                          licence="Menezes-Reis et al. 2016 via FastCleverSeg (GPL-3.0)"))
    return out
