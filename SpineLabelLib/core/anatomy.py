"""Vertebral levels: VerSe codes, names, order, colours, SNOMED CT codes and typical body sizes.

Codes follow the VerSe benchmark (C1-C7 = 1-7, T1-T12 = 8-19, L1-L5 = 20-24, L6 = 25, S1 = 26,
T13 = 28). Anatomical order (cranial to caudal) is C1 ... T12, T13, L1 ... L5, L6, S1.
"""
from __future__ import annotations

from dataclasses import dataclass

CODE_BY_NAME: dict[str, int] = {
    **{f"C{n}": n for n in range(1, 8)},
    **{f"T{n}": 7 + n for n in range(1, 13)},
    **{f"L{n}": 19 + n for n in range(1, 6)},
    "L6": 25,
    "S1": 26,
    "T13": 28,
}
NAME_BY_CODE: dict[int, str] = {code: name for name, code in CODE_BY_NAME.items()}

#: Every level, cranial to caudal, including the transitional T13 and L6.
ORDER: tuple[str, ...] = (
    *(f"C{n}" for n in range(1, 8)),
    *(f"T{n}" for n in range(1, 13)),
    "T13",
    *(f"L{n}" for n in range(1, 6)),
    "L6",
    "S1",
)
#: The usual spine (no T13, no L6).
STANDARD_ORDER: tuple[str, ...] = tuple(n for n in ORDER if n not in ("T13", "L6"))
TRANSITIONAL = frozenset({"T13", "L6"})

# SNOMED CT codes per level (identical in SlicerTotalSegmentator's terminology files).
SNOMED_BY_NAME: dict[str, str] = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001",
    "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
    "S1": "65985001",
}
VERTEBRA_SNOMED = "51282000"  # generic "Vertebra", used for T13 and L6 which have no own code
ANATOMICAL_STRUCTURE = "123037004"
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"


def region(name: str) -> str:
    """'cervical', 'thoracic', 'lumbar' or 'sacral'."""
    return {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "sacral"}[name[0]]


def code_of(name: str) -> int:
    try:
        return CODE_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown vertebral level {name!r}") from None


def name_of(code: int) -> str:
    try:
        return NAME_BY_CODE[int(code)]
    except KeyError:
        raise ValueError(f"unknown vertebral level code {code!r}") from None


def order_index(name: str) -> int:
    """Position in cranio-caudal order (C1 = 0); T13 sits between T12 and L1, L6 between L5 and S1."""
    return ORDER.index(name)


def parse_level_range(text: str, t13: bool = False, l6: bool = False) -> list[str]:
    """'T11-L3' -> ['T11', 'T12', 'L1', 'L2', 'L3'] (with T13/L6 only when asked for)."""
    parts = [p.strip().upper() for p in text.split("-")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p not in CODE_BY_NAME for p in parts):
        raise ValueError(f"level range must look like 'T11-L3', got {text!r}")
    first, last = (order_index(p) for p in parts)
    if first > last:
        raise ValueError(f"level range {text!r} runs caudal to cranial")
    levels = list(ORDER[first:last + 1])
    return [n for n in levels if (n != "T13" or t13 or parts[0] == "T13" or parts[1] == "T13")
            and (n != "L6" or l6 or parts[0] == "L6" or parts[1] == "L6")]


def terminology_entry(name: str) -> str:
    """Slicer's 7-part TerminologyEntry string for a level (category Anatomical Structure)."""
    code = SNOMED_BY_NAME.get(name, VERTEBRA_SNOMED)
    meaning = f"{name} vertebra" if name in SNOMED_BY_NAME else "Vertebra"
    category = f"SCT^{ANATOMICAL_STRUCTURE}^Anatomical Structure"
    return "~".join([TERMINOLOGY_CONTEXT, category, f"SCT^{code}^{meaning}", "^^",
                     REGION_CONTEXT, "^^", "^^"])


# A fixed colour per level: hue runs along the spine, alternating lightness keeps neighbours apart.
def _level_colour(index: int) -> tuple[float, float, float]:
    import colorsys

    hue = (index * 0.61803398875) % 1.0
    lightness = 0.55 if index % 2 else 0.45
    return tuple(round(c, 4) for c in colorsys.hls_to_rgb(hue, lightness, 0.75))


COLOUR_BY_NAME: dict[str, tuple[float, float, float]] = {
    name: _level_colour(i) for i, name in enumerate(ORDER)
}


@dataclass(frozen=True)
class BodySize:
    """Typical adult vertebral body size in mm (approximate, for phantoms and plausibility checks).

    height: posterior body height; depth: antero-posterior (mid-sagittal) depth; width: lateral
    width; disc: height of the disc below. Values interpolate published adult series (Busscher et al.
    2010, Eur Spine J 19:1104 for T1-L5 geometry; Tan et al. 2004 and Panjabi et al. 1991 for the
    cervical spine) and are rounded: they shape phantoms and bound detections, they are not norms.
    """

    height: float
    depth: float
    width: float
    disc: float


_SIZES = {
    "C1": BodySize(10.0, 10.0, 16.0, 4.0),  # anterior arch; no true body
    "C2": BodySize(22.0, 15.0, 17.0, 4.5),  # body + dens
    "C3": BodySize(14.0, 15.5, 17.0, 5.0), "C4": BodySize(14.0, 16.0, 17.5, 5.0),
    "C5": BodySize(14.0, 16.0, 18.5, 5.0), "C6": BodySize(14.0, 16.5, 20.0, 5.0),
    "C7": BodySize(15.0, 16.5, 22.0, 5.0),
    "T1": BodySize(16.0, 17.0, 25.0, 4.5), "T2": BodySize(17.0, 17.5, 25.0, 4.5),
    "T3": BodySize(17.5, 18.5, 25.5, 4.5), "T4": BodySize(18.0, 19.5, 26.0, 4.5),
    "T5": BodySize(18.5, 21.0, 27.0, 5.0), "T6": BodySize(19.0, 22.5, 28.0, 5.0),
    "T7": BodySize(19.5, 24.0, 29.0, 5.0), "T8": BodySize(20.0, 25.5, 30.0, 5.5),
    "T9": BodySize(20.5, 27.0, 31.5, 5.5), "T10": BodySize(21.5, 28.5, 33.0, 6.0),
    "T11": BodySize(22.5, 29.5, 35.0, 6.5), "T12": BodySize(23.5, 30.5, 38.0, 7.5),
    "T13": BodySize(24.0, 31.0, 39.5, 8.0),
    "L1": BodySize(25.0, 32.0, 41.0, 9.0), "L2": BodySize(26.0, 33.0, 43.0, 10.0),
    "L3": BodySize(26.5, 34.0, 45.0, 11.0), "L4": BodySize(26.5, 34.5, 47.0, 11.5),
    "L5": BodySize(26.0, 34.5, 49.0, 11.0), "L6": BodySize(25.5, 34.0, 49.0, 10.0),
    "S1": BodySize(28.0, 34.0, 48.0, 0.0),
}


def body_size(name: str) -> BodySize:
    return _SIZES[name]
