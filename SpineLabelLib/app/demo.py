"""`spinelabel demo`: generate the bundled sample spine, run the whole pipeline on it, say where things are."""
from __future__ import annotations

from pathlib import Path

#: The bundled sample: a deterministic CT-like phantom with a wedge fracture, on an oblique,
#: anisotropic grid, so the demo shows detection, naming, measurement and Genant grading at once.
DEMO_CASE = "spinelabel_sample_ct"
DEMO_PHANTOM = dict(levels=["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"], modality="ct",
                    spacing=(0.9, 0.9, 2.0), seed=7, fractures={"L1": ("wedge", 30.0)},
                    lordosis_deg=20.0, rotation_deg=(8.0, 0.0, 5.0))


def write_sample(folder: Path) -> Path:
    from ..phantom import generate_phantom
    from ..core.volume import save_volume

    path = folder / f"{DEMO_CASE}.nii.gz"
    if not path.exists():
        save_volume(generate_phantom(**DEMO_PHANTOM).image, path)
    return path


def run_demo(out: Path) -> int:
    from .pipeline import run_case

    sample = write_sample(out / "input")
    result = run_case(sample, out)
    folder = (out / result.case_id).resolve()
    print(f"sample input: {sample.resolve()}")
    print(f"found {len(result.vertebrae)} vertebrae: {' '.join(v.level or '?' for v in result.vertebrae)}")
    print(f"found {len(result.disc_measurements)} intervertebral discs: "
          f"{' '.join(m['name'] for m in result.disc_measurements)}")
    graded = [m for m in result.measurements if m.get("genant_grade")]
    for row in graded:
        print(f"  {row['level']}: Genant grade {row['genant_grade']} ({row.get('genant_type', '')})")
    print(f"outputs in {folder}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name}")
    print(f"open in 3D Slicer: drag {sample.name}, {result.case_id}.seg.nrrd and {result.case_id}.mrk.json into Slicer")
    return 0
