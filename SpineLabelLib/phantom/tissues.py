"""Tissue classes of a phantom's tissue map: what the shapes paint and the renderer turns into intensities."""

# Tissue classes of the `tissues` map.
AIR, FAT, MUSCLE, ORGAN, LUNG, CORTICAL, CANCELLOUS, ANNULUS, NUCLEUS, CSF, CORD = range(11)
TISSUE_NAMES = ("air", "fat", "muscle", "organ", "lung", "cortical_bone", "cancellous_bone",
                "disc_annulus", "disc_nucleus", "csf", "spinal_cord")
