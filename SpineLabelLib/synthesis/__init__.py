"""Training images that look like the world: SynthSeg-style synthesis from real spine label maps.

    from SpineLabelLib.synthesis import synthesise, body_masks
    case = synthesise(whole_vertebra_labels, contrast="ct", seed=3)   # case.image (HU), case.labels (bodies)

Training-time only (needs TorchIO, the `train` extra); the product never imports it at run time.
"""
from .bodies import body_masks, bodies_between_discs, vertebral_bodies  # noqa: F401
from .contrasts import CONTRASTS, Tissue  # noqa: F401


def synthesise(*args, **kwargs):
    from .generate import synthesise as _synthesise

    return _synthesise(*args, **kwargs)
