"""Phantom generation speed: prints one JSON line per case (seconds = best of `--repeat` runs).

    python bench/phantom_speed.py [--repeat 2]
"""
import argparse
import json
import resource
import time

from SpineLabelLib.core import anatomy
from SpineLabelLib.phantom import generate_phantom

CASES = [
    ("L1-L3 ct 1mm", "L1-L3", dict(modality="ct")),
    ("L1-L3 t2 1mm crop_to_spine", "L1-L3", dict(modality="t2", crop_to_spine=True)),
    ("L1-L3 ct 1mm oblique", "L1-L3", dict(modality="ct", rotation_deg=(15, -10, 20))),
    ("T1-S1 ct 1mm", "T1-S1", dict(modality="ct", lordosis_deg=30)),
    ("T1-S1 t1 0.8x0.8x2 oblique", "T1-S1", dict(modality="t1", spacing=(0.8, 0.8, 2.0), rotation_deg=(10, 0, 5))),
    ("C1-S1 t2 1mm", "C1-S1", dict(modality="t2", lordosis_deg=20, scoliosis_deg=10)),
    ("T1-S1 t2 1mm curves texture blur", "T1-S1", dict(modality="t2", physiological_curves=True, texture=0.1,
                                                       blur_mm=0.6)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    for name, levels, kwargs in CASES:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            phantom = generate_phantom(anatomy.parse_level_range(levels), **kwargs)
            times.append(time.perf_counter() - start)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"bench": "phantom_speed", "case": name, "seconds": round(min(times), 3),
                          "shape_kji": list(phantom.image.array.shape),
                          "megavoxels": round(phantom.image.array.size / 1e6, 1),
                          "process_peak_rss_mb": round(peak_mb)}), flush=True)


if __name__ == "__main__":
    main()
