"""Synthetic spine phantoms (CT- or MRI-like) with exact ground truth.

API: `generate_phantom(levels, modality, spacing, seed, ...) -> Phantom` (image, body label map,
tissue-class map, truth dict; `Phantom.to_result()` gives a SpineResult), `write_phantom(phantom,
out_dir, case_id)`, `make_phantom('T12-L3', ...) -> SpineResult`, `render(tissues, modality, ...)`
(re-render a tissue map with another contrast), `genant_grade(height_loss_percent)`.

Construction. Levels are stacked along a centre line whose sagittal and coronal tilt vary linearly
along the arc length (lordosis/kyphosis, scoliosis; optional physiological regional curves). Each
vertebra has its own frame (x = right, y = anterior, z = superior, origin at the body centre), rotated
axially towards a scoliotic convexity. Every structure is evaluated with vectorised numpy over its
own bounding box only, voxel centres mapped through the grid's IJK->RAS matrix into the local frame:
  body       elliptic cylinder (depth D, width W) with a 6 % concave waist, 1.2 mm cortical shell,
             1 mm cortical end plates; end plates are explicit functions z(x, y);
  disc       fills exactly the space between the neighbouring end plates (annulus + nucleus);
  posterior  pedicles, articular processes, laminae, spinous and transverse processes (bone rods);
  canal      epidural fat, dural sac (CSF), cord down to L1; ribs on T1-T12/T13; S1 with alae and a
             fused lower sacrum; C1 a ring (anterior arch and lateral masses carry the C1 label);
             C2 body with a dens (part of the C2 label);
  outline    skin, subcutaneous fat, muscle, organs, lungs (thorax) and airway (neck), in world axial
             cross-sections; air outside.
Heights (truth, analytic): at 10 %, 50 %, 90 % of the depth from the anterior edge, i.e. y = +0.4 D,
0, -0.4 D in the mid-sagittal plane x = 0, along the vertebra's z axis:
  normal     all = expected height H;
  wedge      superior end plate tilted: anterior = (1 - p) H, posterior = H; the spine above tilts
             forward by the wedge angle (local kyphosis), so the disc above stays even;
  biconcave  both end plates dished centrally: middle = (1 - p) H, anterior = posterior = H;
  crush      the whole body is (1 - p) H.
Intensities: a mean per tissue class and modality (INTENSITY; CT in HU: cortical 750-950, cancellous
160-240, disc 75-90, muscle 45, fat -100, lung -850, air -1000; T1: fat 900 > marrow 600 > disc
230-270; T2: CSF 950, nucleus 850 > marrow 380 > annulus 170; "random": any contrast per tissue),
varied slightly per seed; optional smooth texture and Gaussian PSF; a smooth multiplicative bias
field (MR-like only) and Gaussian noise.

Modules: `generate` (generate_phantom, Phantom, make_phantom, genant_grade), `level` (one level's shape
and sizes), `placement` (levels along the centre line), `grid` (orientation and extent of the image),
`canvas` (painting in local frames), `shapes` (bones, canal, discs), `outline` (body, lungs, airway),
`tissues` (tissue classes), `intensities` (render, contrast tables, noise), `files` (write_phantom).
"""
from .canvas import CORTEX_MM
from .files import write_phantom
from .generate import Phantom, genant_grade, generate_phantom, make_phantom
from .grid import LPS_DIRECTIONS
from .intensities import DEFAULT_NOISE, INTENSITY, MODALITIES, TEXTURE_SCALE_MM, TEXTURE_WEIGHT, render, tissue_intensities
from .level import DENS_LENGTH, DENS_RADIUS, DENS_Y
from .placement import FRACTURE_TYPES, MAX_FRACTURE_PERCENT, REGIONAL_CURVES
from .shapes import CORD_LAST_LEVEL, END_PLATE_MM, WAIST
from .tissues import AIR, ANNULUS, CANCELLOUS, CORD, CORTICAL, CSF, FAT, LUNG, MUSCLE, NUCLEUS, ORGAN, TISSUE_NAMES

__all__ = [
    "AIR", "ANNULUS", "CANCELLOUS", "CORD", "CORD_LAST_LEVEL", "CORTEX_MM", "CORTICAL", "CSF", "DEFAULT_NOISE",
    "DENS_LENGTH", "DENS_RADIUS", "DENS_Y", "END_PLATE_MM", "FAT", "FRACTURE_TYPES", "INTENSITY", "LPS_DIRECTIONS",
    "LUNG", "MAX_FRACTURE_PERCENT", "MODALITIES", "MUSCLE", "NUCLEUS", "ORGAN", "REGIONAL_CURVES",
    "TEXTURE_SCALE_MM", "TEXTURE_WEIGHT", "TISSUE_NAMES", "WAIST", "Phantom", "genant_grade", "generate_phantom",
    "make_phantom", "render", "tissue_intensities", "write_phantom",
]
