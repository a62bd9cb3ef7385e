"""What the detector sees on a CT, stage by stage (issue 12): the slab finder's choice, the sagittal
slices it is given (PNG, boxes drawn), and its raw detections per slice before linking and fusion.
Prints JSON.

    python bench/chestct_look.py CT.nii.gz [--vert VERT.nii.gz] [--model NAME|FOLDER] --out DIR

With --vert (whole-vertebra label map on the CT's grid) the truth column's left-right position is
reported beside the slab, and each slice's truth bodies are drawn in green.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.canonical import CanonicalView, apply_window  # noqa: E402
from SpineLabelLib.core.volume import load_volume, resample  # noqa: E402
from SpineLabelLib.models.maskrcnn import infer  # noqa: E402


def truth_on_canonical(vert_path: str, canonical) -> np.ndarray:
    from SpineLabelLib.synthesis.bodies import body_masks

    labels = body_masks(load_volume(vert_path, check_values=False))
    return resample(labels, None, reference=canonical, label=True).array


def draw(image2d: np.ndarray, detections, truth2d, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6, 6 * image2d.shape[0] / image2d.shape[1]), dpi=120)
    ax.imshow(image2d, cmap="gray", vmin=0, vmax=1)
    if truth2d is not None and truth2d.any():
        ax.contour(truth2d > 0, levels=[0.5], colors="lime", linewidths=0.6)
    for d in detections:
        col0, row0, col1, row1 = d.box
        colour = "red" if d.score >= 0.5 else "orange"
        ax.add_patch(Rectangle((col0, row0), col1 - col0, row1 - row0, fill=False, color=colour, lw=0.7))
        ax.text(col1 + 2, (row0 + row1) / 2, f"{anatomy.ORDER[int(np.argmax(d.level_probs))]} {d.score:.2f}",
                color=colour, fontsize=4)
    ax.set_title(title, fontsize=6)
    ax.axis("off")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    import torch

    from SpineLabelLib.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct")
    parser.add_argument("--vert", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every-mm", type=float, default=6.0, help="slices rendered and detected across the search range")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    network = load_model(args.model).network
    config = network.config
    view = CanonicalView(load_volume(args.ct), "ct")
    canonical = infer.pad_head_and_feet(view.at(config.spacing_mm), infer.EDGE_PADDING_MM)
    image = apply_window(canonical.array, view.window)
    truth = truth_on_canonical(args.vert, canonical) if args.vert else None
    x_mm = lambda x: float(canonical.kji_to_ras(np.array([x, 0, 0]))[0][0])   # noqa: E731
    report = {"ct": args.ct, "model": args.model or "vertebra-detector", "canonical_shape": list(image.shape),
              "spacing_mm": config.spacing_mm, "slab_finder": {}, "slices": []}
    if truth is not None:
        xs_truth = np.nonzero(truth.reshape(truth.shape[0], -1).any(axis=1))[0]
        report["truth_x"] = [int(xs_truth.min()), int(xs_truth.max())]
        report["truth_levels"] = [anatomy.name_of(int(c)) for c in np.unique(truth) if c]
    low, high, coarse = infer.find_slab(network, image, config)
    report["slab_finder"] = {"slab": [int(low), int(high)], "slab_ras_x_mm": [x_mm(low), x_mm(high)] if low >= 0 else None,
                             "coarse": {int(x): [round(d.score, 2) for d in dets] for x, dets in sorted(coarse.items())}}
    step = max(1, int(round(args.every_mm / config.spacing_mm)))
    profile = image.reshape(image.shape[0], -1).mean(axis=1)
    weights = np.clip(profile - profile.min(), 0, None) + 1e-9
    report["slab_finder"]["profile_centre"] = int(round(np.average(np.arange(len(profile)), weights=weights)))
    centre = report.get("truth_x", [low, high] if low >= 0 else [report["slab_finder"]["profile_centre"]] * 2)
    middle = (centre[0] + centre[1]) // 2
    xs = sorted(set(range(max(0, middle - 6 * step), min(image.shape[0], middle + 6 * step + 1), step)))
    found = infer.run_on_slices(network, image, xs, config.slice_offset)
    for x in xs:
        detections = found[x]
        truth2d = truth[x] if truth is not None else None
        report["slices"].append({
            "x": x, "x_ras_mm": round(x_mm(x), 1),
            "truth_bodies": int(len(np.unique(truth2d)) - 1) if truth2d is not None else None,
            "detections": [{"box": [int(v) for v in d.box], "score": round(d.score, 3),
                            "level": anatomy.ORDER[int(np.argmax(d.level_probs))]} for d in detections]})
        strong = sum(d.score >= 0.5 for d in detections)
        draw(image[x], detections, truth2d, out / f"slice_{x:03d}.png",
             f"x={x} ({x_mm(x):.0f} mm R): {strong} >= 0.5, {len(detections)} raw")
    # an axial view through the middle of the column: where the slab and the column are
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = int(np.median(np.nonzero(truth.any(axis=(0, 2)))[0])) if truth is not None else image.shape[1] // 2
    fig, ax = plt.subplots(dpi=110)
    ax.imshow(image[:, row, :].T, cmap="gray", vmin=0, vmax=1)
    if low >= 0:
        ax.axvline(low, color="red"), ax.axvline(high, color="red")
    if truth is not None:
        ax.contour(truth[:, row, :].T > 0, levels=[0.5], colors="lime", linewidths=0.6)
    ax.set_title(f"axial row {row}: slab {low}..{high} (red), truth (green)", fontsize=7)
    fig.savefig(out / "axial.png", bbox_inches="tight")
    plt.close(fig)
    (out / "look.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "slices"}, indent=1))
    for s in report["slices"]:
        print(s["x"], s["x_ras_mm"], "truth", s["truth_bodies"], "det>=0.5:",
              sum(d["score"] >= 0.5 for d in s["detections"]), "raw", len(s["detections"]),
              "top", sorted([d["score"] for d in s["detections"]], reverse=True)[:6])
    return 0


if __name__ == "__main__":
    sys.exit(main())
