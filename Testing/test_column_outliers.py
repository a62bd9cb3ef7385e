"""`drop_off_spine`: detections off the vertebral column are dropped, bodies that continue a
bending column beyond the confident ones are kept."""
import numpy as np

from SpineLabelLib.models.maskrcnn.infer import Body, SliceDetection, drop_off_spine

SPACING = 1.25


def _body(x_mm, si_mm, ap_mm, score=0.95, height_mm=18.0, depth_mm=28.0) -> Body:
    """A body seen on five sagittal slices around x_mm (box in canonical pixels: cols = a-p, rows = s-i)."""
    half_rows, half_cols = height_mm / 2 / SPACING, depth_mm / 2 / SPACING
    row, col = si_mm / SPACING, ap_mm / SPACING
    box = np.array([col - half_cols, row - half_rows, col + half_cols, row + half_rows])
    x0 = int(round(x_mm / SPACING))
    return Body([SliceDetection(x, box, score, np.ones(3) / 3, np.ones((2, 2))) for x in range(x0 - 2, x0 + 3)])


def _column(si_values, x_of, ap_of, score=0.95):
    return [_body(x_of(s), s, ap_of(s), score) for s in si_values]


def _kept(body, bodies) -> bool:
    return any(kept is body for kept in drop_off_spine(bodies, SPACING))


def test_bowel_in_front_of_the_column_is_dropped():
    column = _column(np.arange(180, 350, 28), lambda s: 220.0, lambda s: 220.0)
    bowel = _body(222.0, 260.0, 175.0, score=0.7)            # 45 mm in front, amid the bodies
    kept = drop_off_spine(column + [bowel], SPACING)
    assert not any(b is bowel for b in kept) and len(kept) == len(column)


def test_upper_thoracic_body_of_a_bending_column_is_kept():
    # Confident lower thoracic/lumbar bodies on a straight line, then the kyphotic upper column
    # 100 mm above, 20 mm to the left and 30 mm further back (anterior is smaller AP here).
    lower = _column(np.arange(180, 350, 26), lambda s: 224.0, lambda s: 226.0)
    upper = _body(200.0, 78.0, 196.0, score=0.6)
    assert _kept(upper, lower + [upper])


def test_a_detection_just_beyond_the_column_end_still_has_to_line_up():
    lower = _column(np.arange(180, 350, 26), lambda s: 224.0, lambda s: 226.0)
    stray = _body(224.0, 365.0, 180.0, score=0.8)            # 15 mm below the last body, 46 mm in front
    assert not _kept(stray, lower + [stray])


def test_curved_column_is_followed_inside_the_confident_span():
    # A lordotic lumbar curve (AP changes quadratically): every body on it stays.
    si = np.arange(160, 360, 25)
    column = _column(si, lambda s: 220.0, lambda s: 200.0 + 0.002 * (s - 260) ** 2 * 4)
    assert len(drop_off_spine(column, SPACING)) == len(column)
