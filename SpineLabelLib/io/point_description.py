"""The description text of a vertebra's control point, e.g. ``score=0.930; source=detector; instance=2``.

One codec for every place that writes or reads it: the `.mrk.json` files (`io.markups`) and the
Slicer point list (`slicer_adapter.scene`). The text stays readable in Slicer's control point table
and a person may edit it there, so decoding is lenient: unknown keys, spaces and malformed values are
ignored, and each missing field is reported as None for the caller to fill with its default.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.result import SOURCES, Vertebra

_FIELD = re.compile(r"([A-Za-z_]\w*)\s*=\s*([^;]*)")


@dataclass(frozen=True)
class PointDescription:
    """The fields a description carries; None where the text does not give a valid value."""

    score: float | None = None
    source: str | None = None
    instance: int | None = None          # the body mask's value in the result's instance map
    checks: tuple[str, ...] = ()          # the warnings written (informative: recomputed on every write)


#: what a reader of the point list should look at (the ``check=`` field)
LOW_CONFIDENCE_CHECK = "low confidence"
UNCERTAIN_NAMING_CHECK = "levels uncertain"


def checks(vertebra: Vertebra, naming: dict | None = None) -> list[str]:
    """The warnings a point carries: its own low confidence (`naming.confidence.LOW_VERTEBRA_CONFIDENCE`),
    and the case's uncertain naming (every named point of such a case; a level a person set is sure)."""
    from ..naming.confidence import is_low_confidence

    found = [LOW_CONFIDENCE_CHECK] if is_low_confidence(vertebra) else []
    if naming and naming.get("uncertain") and vertebra.level and not vertebra.locked:
        found.append(UNCERTAIN_NAMING_CHECK)
    return found


def encode(vertebra: Vertebra, with_instance: bool = True, naming: dict | None = None) -> str:
    """Score and provenance as words; ``with_instance`` adds the mask link (only meaningful next to
    the segmentation the point belongs to, so a standalone file leaves it out); ``check=`` what to look
    at (low confidence, uncertain naming of the case given as ``naming``), absent when nothing."""
    text = f"score={vertebra.score:.3f}; source={vertebra.source}"
    if with_instance:
        text += f"; instance={vertebra.instance}"
    warnings = checks(vertebra, naming)
    return f"{text}; check={', '.join(warnings)}" if warnings else text


def decode(text: str | None) -> PointDescription:
    fields = {key: value.strip() for key, value in _FIELD.findall(str(text or ""))}
    return PointDescription(score=_float(fields.get("score")),
                            source=fields.get("source") if fields.get("source") in SOURCES else None,
                            instance=int(fields["instance"]) if fields.get("instance", "").isdigit() else None,
                            checks=tuple(c.strip() for c in fields.get("check", "").split(",") if c.strip()))


def _float(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
