"""Stage 3, name levels: C1 ... L5, S1 (T13/L6 on evidence) by anatomical order (`naming.labelling`).

needs: vertebrae. gives: vertebrae (levels; spurious detections dropped).
"""
from __future__ import annotations

from ..core.errors import NoSpineFoundError
from ..core.result import SpineResult
from .base import RunContext


class NameLevels:
    name = "name"
    needs = ("vertebrae",)
    gives = ("vertebrae",)
    share = 0.02

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..naming.labelling import relabel_result

        if not result.vertebrae:
            raise NoSpineFoundError("no vertebra found (is this a spine CT or MRI?)")
        relabel_result(result)
