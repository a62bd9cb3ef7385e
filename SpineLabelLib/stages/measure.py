"""Stage 4, measure: heights, distances, ratios, Genant grade, volume and radiomics of every body.

needs: image, vertebrae. gives: measurements, distances.
"""
from __future__ import annotations

from ..core.result import SpineResult
from .base import RunContext


class MeasureBodies:
    name = "measure"
    needs = ("image", "vertebrae")
    gives = ("measurements", "distances")
    share = 0.03

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..measurement.bodies import measure_result

        measure_result(result)
