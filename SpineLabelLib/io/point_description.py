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


def encode(vertebra: Vertebra, with_instance: bool = True) -> str:
    """Score and provenance as words; ``with_instance`` adds the mask link (only meaningful next to
    the segmentation the point belongs to, so a standalone file leaves it out)."""
    text = f"score={vertebra.score:.3f}; source={vertebra.source}"
    return f"{text}; instance={vertebra.instance}" if with_instance else text


def decode(text: str | None) -> PointDescription:
    fields = {key: value.strip() for key, value in _FIELD.findall(str(text or ""))}
    return PointDescription(score=_float(fields.get("score")),
                            source=fields.get("source") if fields.get("source") in SOURCES else None,
                            instance=int(fields["instance"]) if fields.get("instance", "").isdigit() else None)


def _float(text: str | None) -> float | None:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
