"""Spine alignment from the labelled bodies: endplate planes, segmental and regional sagittal angles
(lordosis, kyphosis), the coronal Cobb angle, and listhesis with its Meyerding grade.

`measure_alignment(result)` fits both endplates of every labelled body with a mask (`endplates`), derives
the measures (`angles`, `listhesis`) and stores plain records on the result:
``result.alignment = {"endplates": [...], "measures": [...]}``; each measure is one row of
`<case>.alignment.csv` (`table.ALIGNMENT_COLUMNS`). A measure whose endplate is flagged (cut by the field
of view, irregular, not fitted) keeps its row with an empty value and the reason in `flags`: no value is
invented from a surface that is not an endplate.
"""
from .measures import measure_alignment

__all__ = ["measure_alignment"]
