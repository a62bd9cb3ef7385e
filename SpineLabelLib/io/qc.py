"""The QC image `<case>.qc.png`: one sagittal slice of the whole field of view with body outlines, level
names, measurement lines, disc outlines with their names and heights, and the naming verdict
(orange when the levels are uncertain).

The image is resampled to the canonical orientation (head up, anterior left) on an isotropic grid,
so oblique acquisitions still give a true sagittal view. Drawn with matplotlib's Agg canvas (no
window, no global pyplot state), so it is deterministic and safe inside Slicer.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import anatomy, discs
from ..core.paths import atomic_path
from ..core.result import SpineResult
from ..core.volume import Volume, resample_to_canonical
from ..alignment.qc import draw_alignment

CT_WINDOW = (400.0, 1800.0)         # bone window: centre, width in HU
MAX_VOXELS = 24_000_000             # coarser QC grid for very large inputs (memory and time)
LONG_SIDE_PX = 900


def _qc_spacing(image: Volume) -> float:
    extent = np.asarray(image.shape_ijk) * image.spacing
    return float(max(1.0, (np.prod(extent) / MAX_VOXELS) ** (1 / 3)))


def _window(slice_: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "ct":
        centre, width = CT_WINDOW
        return centre - width / 2, centre + width / 2
    values = slice_[slice_ > slice_.min()] if np.any(slice_ > slice_.min()) else slice_.ravel()
    low, high = np.percentile(values, [1, 99.5])
    return float(low), float(max(high, low + 1e-3))


def _slice_index(result: SpineResult, canonical: Volume, labels: np.ndarray | None) -> int:
    """Left-right index: the median centroid, else the slice with most body voxels, else the middle."""
    centroids = [v.centroid_ras for v in result.vertebrae if np.all(np.isfinite(v.centroid_ras))]
    if centroids:
        x = canonical.ras_to_kji(np.median(np.array(centroids), axis=0))[0][0]
    elif labels is not None and labels.any():
        x = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    else:
        x = canonical.array.shape[0] // 2
    return int(np.clip(round(float(x)), 0, canonical.array.shape[0] - 1))


def _to_row_col(canonical: Volume, ras) -> tuple[float, float]:
    k, j, i = canonical.ras_to_kji(np.asarray(ras, dtype=float))[0]
    return j, i          # row = superior->inferior, column = anterior->posterior


def _draw(result: SpineResult, canonical: Volume, labels: np.ndarray | None, x: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = canonical.array[x].astype(float)
    rows, cols = image.shape
    (row0, row1), (col0, col1) = _view_box(result, canonical, labels, rows, cols)
    zoom = LONG_SIDE_PX / max(row1 - row0, col1 - col0)  # output pixels per slice pixel
    figure = Figure(figsize=((col1 - col0) * zoom / 100, (row1 - row0) * zoom / 100), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_axes([0, 0, 1, 1])
    axes.set_axis_off()
    low, high = _window(image, result.modality)
    axes.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    if labels is not None:
        for code in sorted(int(c) for c in np.unique(labels[x]) if c and c < discs.DISC_LABEL_OFFSET):
            mask = labels[x] == code
            name = anatomy.name_of(code)
            colour = anatomy.COLOUR_BY_NAME[name]
            axes.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
            r, c = np.argwhere(mask).T
            axes.text(c.min() - 2, r.mean(), name, color=colour, fontsize=9, ha="right", va="center",
                      fontweight="bold")
    for v in result.vertebrae:
        row, col = _to_row_col(canonical, v.centroid_ras)
        colour = anatomy.COLOUR_BY_NAME.get(v.level, (1.0, 1.0, 0.0))
        axes.plot([col], [row], marker="+", color=colour, markersize=8)
        if v.level and (labels is None or not np.any(labels[x] == v.code)):
            axes.text(col - 4, row, v.level, color=colour, fontsize=9, ha="right", va="center")
    _draw_lines(result, canonical, axes)
    _draw_discs(result, canonical, labels, x, axes)
    axes.set_xlim(col0 - 0.5, col1 - 0.5)
    axes.set_ylim(row1 - 0.5, row0 - 0.5)
    right_mm = canonical.kji_to_ras([x, 0, 0])[0][0]
    width_px = figure.get_figwidth() * figure.dpi
    naming_lines = _draw_naming(result, axes, width_px)
    # the alignment summary sits above the naming verdict (8-point lines, ~1.35 line heights each)
    line_fraction = 8 * 1.35 * figure.dpi / 72 / (figure.get_figheight() * figure.dpi)
    draw_alignment(result, lambda ras: _to_row_col(canonical, ras), axes,
                   bottom=0.01 + naming_lines * line_fraction + (0.01 if naming_lines else 0))
    axes.text(0.01, 0.99, _title(result, right_mm, width_px), color="white",
              fontsize=8, va="top", ha="left", transform=axes.transAxes,
              bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    return figure


def _draw_naming(result: SpineResult, axes, width_px: float) -> int:
    """The naming verdict at the bottom: orange when the levels are uncertain; returns its line count."""
    import textwrap

    from ..naming.confidence import naming_line

    if not result.naming:
        return 0
    characters = max(12, int(width_px * 0.94 / 6.5))
    text = "\n".join(textwrap.wrap(naming_line(result.naming), characters, break_long_words=True))
    colour = "orange" if result.naming.get("uncertain") else "white"
    axes.text(0.01, 0.01, text, color=colour, fontsize=8, va="bottom", ha="left", transform=axes.transAxes,
              bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    return text.count("\n") + 1


def _title(result: SpineResult, right_mm: float, width_px: float) -> str:
    """Case, modality and slice position, wrapped so that a narrow (tall lumbar) view shows it whole."""
    import textwrap

    text = f"{result.case_id}  {result.modality.upper()}  sagittal R={right_mm:.1f} mm  (head up, anterior left)"
    characters = max(12, int(width_px * 0.94 / 6.5))        # 8-point DejaVu Sans: under 6.5 px a character
    return "\n".join(textwrap.wrap(text, characters, break_long_words=True))


def _view_box(result: SpineResult, canonical: Volume, labels: np.ndarray | None, rows: int, cols: int):
    """Rows and columns to show: the whole field of view, so that a vertebra the detector missed, above,
    below or between the found ones, is on the picture too (cropping to the found bodies hid it)."""
    return (0, rows), (0, cols)


def _draw_lines(result: SpineResult, canonical: Volume, axes) -> None:
    for measurement in result.measurements:
        lines = measurement.get("lines_ras") or {}
        colour = anatomy.COLOUR_BY_NAME.get(measurement.get("level", ""), (1.0, 1.0, 0.0))
        for start, end in lines.values():
            (r0, c0), (r1, c1) = _to_row_col(canonical, start), _to_row_col(canonical, end)
            axes.plot([c0, c1], [r0, r1], color=colour, linewidth=1.0)


def _draw_discs(result: SpineResult, canonical: Volume, labels: np.ndarray | None, x: int, axes) -> None:
    """Disc outlines (from the label map), their height lines, and name + middle height beside them."""
    for row in result.disc_measurements:
        colour = discs.colour(row["name"])
        if labels is not None and row.get("label"):
            mask = labels[x] == row["label"]
            if mask.any():
                axes.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
        for start, end in (row.get("lines_ras") or {}).values():
            (r0, c0), (r1, c1) = _to_row_col(canonical, start), _to_row_col(canonical, end)
            axes.plot([c0, c1], [r0, r1], color=colour, linewidth=0.8)
        if row.get("centre_ras") is not None:
            r, c = _to_row_col(canonical, row["centre_ras"])
            height = row.get("height_middle_mm")
            text = row["name"] + (f" {height:.1f} mm" if height is not None else "")
            axes.text(c, r, text, color=colour, fontsize=7, ha="center", va="center")


def write_qc_png(result: SpineResult, path: str | os.PathLike) -> Path:
    """Write the sagittal QC overlay as PNG (through a temporary file)."""
    path = Path(path)
    view = result.canonical_view()           # the grid detection already made, when it ran
    spacing = view.spacings[0] if view.spacings else _qc_spacing(result.image)
    canonical = view.at(spacing)
    labels = None
    if result.instances is not None:
        from .segfile import label_map_with_discs

        labels = resample_to_canonical(result.image.with_array(label_map_with_discs(result)), spacing, label=True).array
    figure = _draw(result, canonical, labels, _slice_index(result, canonical, labels))
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", dpi=100, metadata={"Software": None})
    return path
