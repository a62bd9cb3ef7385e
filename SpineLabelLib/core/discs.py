"""Intervertebral discs: names, label values, SNOMED CT codes and colours, from the two neighbours.

A disc is named by the vertebrae above and below ("L4-L5"); its label value is 100 + the VerSe
code of the vertebra above (SPINEPS' convention: L4-L5 = 123, L5-S1 = 124, T12-T13 = 119,
T13-L1 = 128, L5-L6 = 124, L6-S1 = 125). Because the value follows the upper vertebra only, L5-L6
and L5-S1 share 124: a spine has one or the other. C1 has no body and no disc below it, so the
first disc is C2-C3.

SNOMED CT codes are the level-specific disc structures of DICOM CID 7604 "Intervertebral Disc"
(PS3.16), C2/C3 ... L5/S1. Discs next to a transitional T13 or L6 have no code there, and the
generic "Intervertebral disc structure" concept is not used because its code could not be
confirmed here: those discs carry a local (99-prefixed, DICOM-style private) code with the level
in the segment name.
"""
from __future__ import annotations

from . import anatomy

DISC_LABEL_OFFSET = 100
DISC_CODE_OF_MEANING = "Intervertebral disc"

# DICOM PS3.16 CID 7604 "Intervertebral Disc" (SNOMED CT, body structure), upper level -> code.
SNOMED_BY_DISC: dict[str, str] = {
    "C2-C3": "1078209008", "C3-C4": "58820006", "C4-C5": "49400002", "C5-C6": "73959003",
    "C6-C7": "75095006", "C7-T1": "37414007",
    "T1-T2": "40908007", "T2-T3": "6004007", "T3-T4": "2620004", "T4-T5": "82965004",
    "T5-T6": "72692000", "T6-T7": "74401007", "T7-T8": "28693002", "T8-T9": "9188009",
    "T9-T10": "113209001", "T10-T11": "34959001", "T11-T12": "1537001", "T12-L1": "76206002",
    "L1-L2": "80064006", "L2-L3": "67459009", "L3-L4": "62551000", "L4-L5": "84020006",
    "L5-S1": "715056000",
}
LOCAL_SCHEME = "99SPINELABEL"       # DICOM private coding scheme: never mistaken for SNOMED CT
LOCAL_DISC_CODE = "disc"


def disc_name(upper: str, lower: str) -> str:
    """'L4', 'L5' -> 'L4-L5'; raises ValueError unless ``lower`` directly follows ``upper``."""
    if not is_adjacent(upper, lower):
        raise ValueError(f"{upper} and {lower} are not neighbours: no disc between them")
    return f"{upper}-{lower}"


def is_adjacent(upper: str, lower: str) -> bool:
    """Whether a disc lies between these levels: ``lower`` is the next level below ``upper``,
    skipping a transitional T13 / L6 that is not there (T12-L1 and T12-T13 are both discs)."""
    if upper not in anatomy.CODE_BY_NAME or lower not in anatomy.CODE_BY_NAME or upper == "C1":
        return False
    a, b = anatomy.order_index(upper), anatomy.order_index(lower)
    between = anatomy.ORDER[a + 1:b]
    return b > a and all(name in anatomy.TRANSITIONAL for name in between)


def split_name(name: str) -> tuple[str, str]:
    """'L4-L5' -> ('L4', 'L5'); ValueError for anything that is not two neighbouring levels."""
    parts = [p.strip().upper() for p in str(name).split("-")]
    if len(parts) != 2 or not is_adjacent(*parts):
        raise ValueError(f"{name!r} is not a disc name (two neighbouring levels, e.g. 'L4-L5')")
    return parts[0], parts[1]


def is_disc_name(name: str) -> bool:
    try:
        split_name(name)
    except ValueError:
        return False
    return True


def label_of(name: str) -> int:
    """Label value: 100 + the VerSe code of the vertebra above."""
    upper, _ = split_name(name)
    return DISC_LABEL_OFFSET + anatomy.code_of(upper)


def upper_of_label(value: int) -> str:
    """The vertebra above a disc label value (123 -> 'L4')."""
    return anatomy.name_of(int(value) - DISC_LABEL_OFFSET)


def is_disc_label(value: int) -> bool:
    return int(value) - DISC_LABEL_OFFSET in anatomy.NAME_BY_CODE


def discs_between(levels: list[str]) -> list[str]:
    """Disc names between consecutive levels of a cranio-caudal list (gaps give no disc)."""
    ordered = sorted((n for n in levels if n), key=anatomy.order_index)
    return [f"{a}-{b}" for a, b in zip(ordered, ordered[1:]) if is_adjacent(a, b)]


def terminology_entry(name: str) -> str:
    """Slicer's 7-part TerminologyEntry string (category Anatomical Structure)."""
    split_name(name)
    category = f"SCT^{anatomy.ANATOMICAL_STRUCTURE}^Anatomical Structure"
    if name in SNOMED_BY_DISC:
        kind = f"SCT^{SNOMED_BY_DISC[name]}^{name.replace('-', '/')} disc"
    else:
        kind = f"{LOCAL_SCHEME}^{LOCAL_DISC_CODE}^{DISC_CODE_OF_MEANING}"
    return "~".join([anatomy.TERMINOLOGY_CONTEXT, category, kind, "^^", anatomy.REGION_CONTEXT, "^^", "^^"])


def colour(name: str) -> tuple[float, float, float]:
    """Fixed colour: pale, near-white blue-grey alternating by level, so discs never look like a body."""
    upper, _ = split_name(name)
    index = anatomy.order_index(upper)
    return (0.62, 0.80, 0.95) if index % 2 else (0.85, 0.93, 1.0)
