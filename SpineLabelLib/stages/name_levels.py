"""Stage 3, name levels: C1 ... L5, S1 (T13/L6 on evidence) by anatomical order (`naming.labelling`),
weighing the anatomical anchors in view (`naming.anchors`: the sacrum, C2, on CT the last rib), and
saying how sure the naming is (`naming.confidence`); a naming the discs' sign of the sacrum alone
decided is flagged uncertain (`naming.sacrum.disc_decided`). For `--model ensemble` the two families'
level evidence is first re-pooled with this case's weights (`models.dense.ensemble.weigh_families`).

needs: vertebrae. gives: vertebrae (levels, anchor evidence; spurious detections dropped), naming.
"""
from __future__ import annotations

from ..core.errors import NoSpineFoundError
from ..core.result import SpineResult
from .base import RunContext


class NameLevels:
    name = "name"
    needs = ("vertebrae",)
    gives = ("vertebrae", "naming")
    share = 0.02

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..models.dense.ensemble import weigh_families
        from ..naming import anchors

        if not result.vertebrae:
            raise NoSpineFoundError("no vertebra found (is this a spine CT or MRI?)")
        anchors.gather_evidence(result)
        weigh_families(result)          # the ensemble: each family weighed by how its evidence fits the anchors
        name_vertebrae(result)
        if result.naming.get("uncertain"):
            result.warnings.append(result.naming["reason"])


def name_vertebrae(result: SpineResult, params=None, policy=None) -> SpineResult:
    """Levels and verdict from the evidence already gathered: relabel by anatomical order, assess, and
    flag a naming the discs' sign of the sacrum alone decided. ``params`` / ``policy``: the labelling's
    `LabellingParams` and `NamingPolicy` (None: their defaults; bench/naming_replay.py varies them)."""
    from ..naming import sacrum
    from ..naming.labelling import DEFAULT_PARAMS, relabel_result

    params = params or DEFAULT_PARAMS
    relabel_result(result, params, policy)
    if sacrum.disc_decided(result, params):
        result.naming.update(uncertain=True, reason=sacrum.DISC_DECIDED_MESSAGE, decided_by="sacrum discs")
    return result
