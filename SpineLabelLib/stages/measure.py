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


class MeasureDiscs:
    """Volume, heights, disc height index and disc/CSF ratio of every disc in the disc layer
    (nothing without one). needs: image, vertebrae. gives: disc_measurements."""

    name = "measure_discs"
    needs = ("image", "vertebrae")
    gives = ("disc_measurements",)
    share = 0.01

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..measurement.discs import measure_discs

        measure_discs(result)
