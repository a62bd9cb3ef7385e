"""Stage 5, alignment: endplates of every body, segmental and regional angles, Cobb angle and
listhesis (`alignment.measure_alignment`).

needs: image, vertebrae, layers.bodies. gives: alignment.
"""
from __future__ import annotations

from ..core.result import SpineResult
from .base import RunContext


class MeasureAlignment:
    name = "alignment"
    needs = ("image", "vertebrae", "layers.bodies")
    gives = ("alignment",)
    share = 0.02

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..alignment import measure_alignment

        measure_alignment(result)
