"""The second detector family: paper 002's two-stage dense detection and identification.

Stage 1 (3-D U-Net, `networks.DenseDetector.detection`) finds the vertebral column; stage 2 (2-D
U-Net on 8-slice sagittal stacks, `.identification`) gives every voxel a continuous level index;
`aggregate` turns the product of the two maps into vertebrae. `infer.detect_dense` returns the same
`DetectionOutput` as the Mask R-CNN detector, so labelling, measurement, correction and export
work unchanged; the family is registered in `family.py` (the locate stage runs it for cards of this family).
"""
from .networks import FAMILY, DenseConfig, build_network


def detect_dense(image, modality: str, network, progress=None, cancel=None):
    """Bodies (centroid_ras, level_probs, score, instance) and an instance map on ``image``'s grid."""
    from .infer import detect_dense as run

    return run(image, modality, network, progress=progress, cancel=cancel)


__all__ = ["FAMILY", "DenseConfig", "build_network", "detect_dense"]
