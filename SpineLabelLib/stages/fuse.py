"""Stage 2b of `--model ensemble`: the dense family's level evidence joins Mask R-CNN's.

Mask R-CNN (with the body segmenter) gives the bodies, masks and centroids; the dense detector,
run on the sagittal slices around those bodies only (its ``focus_ras``), adds its level
distribution, pooled per matched body at equal weights (`models.dense.ensemble.fuse_level_evidence`);
each family's own evidence is kept in notes["fuse"]["family_scores"] for the naming stage, which
re-pools it with the case's weights once the anchors are known (`ensemble.weigh_families`).
needs: image, vertebrae. gives: vertebrae (level scores), models, notes["fuse"].
"""
from __future__ import annotations

import numpy as np

from ..core.result import SpineResult
from .base import RunContext
from .locate import record_models

DENSE_MODEL = "vertebra-dense-detector"


class FuseDenseEvidence:
    name = "fuse"
    needs = ("image", "vertebrae")
    gives = ("vertebrae", "models")
    share = 0.4

    def __init__(self, dense_model=None) -> None:
        self.dense_model = dense_model        # a LoadedModel, or None for the bundled dense detector

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..models.dense.ensemble import family_scores, fuse_level_evidence, match_dense_bodies
        from ..models.families import family_of_card
        from ..models.registry import load_model

        dense = self.dense_model or load_model(DENSE_MODEL)
        # Its level evidence only: Mask R-CNN's masks stay, so the dense map is not drawn; and only
        # around Mask R-CNN's bodies (the evidence is asked for them alone), which saves a third
        # of the dense pass on a CT whose field of view is wider than the spine.
        focus = np.array([v.centroid_ras for v in result.vertebrae], float)
        output = family_of_card(dense.card).run(result.canonical_view(), dense.network, context.options,
                                                context.progress, context.cancel, masks=False,
                                                focus_ras=focus)
        matches = match_dense_bodies(result.vertebrae, output.bodies)
        families = family_scores(result.vertebrae, matches)     # each family's own, for the naming's weights
        matched = fuse_level_evidence(result.vertebrae, output.bodies, matches=matches)
        record_models(result, dense)
        result.notes[self.name] = {"dense_bodies": len(output.bodies), "matched": matched,
                                   "dense_levels": [b.get("vote_level") for b in output.bodies],
                                   "family_scores": families}
