"""Stage 2c, disc map (MRI, before naming): the disc segmenter's discs between every two neighbouring
found bodies, and at a probe site below the lowest body, so that naming can tell the first sacral
segment (a disc above, bone below) from L5 (`naming.sacrum`). The disc stage after naming reuses these
discs for the pairs naming keeps, so the disc model runs once per pair.

Bodies are taken cranio-caudally as found (no names yet); each disc is valued by the instance of the
body above (`core.disc_layer`), which naming does not change. CT, or no disc model: nothing is done
(the geometric disc says nothing about the sacrum) and the disc stage works as before.

needs: image, vertebrae, layers.bodies. gives: layers.discs, models, notes["disc_map"] (the pairs
drawn and the disc volume below each body, the last one at the probe site).
"""
from __future__ import annotations

import numpy as np

from ..core.result import DISCS, SpineResult
from .base import RunContext


def chosen_disc_segmenter(result: SpineResult, context: RunContext):
    """The disc model of this run on MRI (one handed in, else the options' choice), None on CT."""
    from ..models.registry import disc_segmenter_for

    if result.modality != "mr":
        return None
    choice = context.options.disc_segmenter if context.disc_segmenter == "options" else context.disc_segmenter
    return disc_segmenter_for(choice)


class MapDiscs:
    name = "disc_map"
    needs = ("image", "vertebrae", "layers.bodies")
    gives = ("layers.discs", "models", "notes")
    share = 0.03

    def run(self, result: SpineResult, context: RunContext) -> None:
        from ..models.disc_unet.infer import DiscSite, pair_sites
        from ..models.families import family_of_card
        from ..naming.sacrum import probe_centre
        from .locate import record_models

        bodies = [v for v in result.vertebrae if v.instance]
        model = chosen_disc_segmenter(result, context) if len(bodies) >= 2 else None
        if model is None:
            return
        family = family_of_card(model.card)
        pairs = list(zip(bodies, bodies[1:]))
        view = result.canonical_view()
        layer = family.run(view, result, model.network, context.cancel, sites=pair_sites(pairs))
        points = np.array([v.centroid_ras for v in bodies])
        probe = DiscSite(bodies[-1].instance, probe_centre(points), (bodies[-1].instance,))
        below = family.run(view, result, model.network, context.cancel, sites=[probe])
        voxel_mm3 = float(abs(np.linalg.det(result.image.ijk_to_ras[:3, :3])))
        counts = np.bincount(layer.ravel(), minlength=max(v.instance for v in bodies) + 1)
        volumes = [float(counts[upper.instance]) * voxel_mm3 for upper, _ in pairs]
        volumes.append(float(np.count_nonzero(below)) * voxel_mm3)
        result.layers[DISCS] = layer
        record_models(result, model)
        result.notes[self.name] = {"model": model.name, "instances": [v.instance for v in bodies],
                                   "pairs": [[u.instance, b.instance] for u, b in pairs],
                                   "disc_mm3": [round(v, 1) for v in volumes]}
        context.report(1.0, f"{sum(v > 0 for v in volumes[:-1])} discs between {len(bodies)} bodies")
