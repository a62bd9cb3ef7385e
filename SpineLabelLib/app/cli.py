"""The `spinelabel` command: translates arguments into engine calls, errors into one line and an exit code.

Exit status: 0 success, 1 when a case or the command failed (one line on stderr), 2 for usage errors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import __version__
from ..core.errors import SpineLabelError
from ..core.options import add_run_arguments

PROG = "spinelabel"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value
    return parse


def add_cohort_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the cases come from and where they run (`SpineLabelLib.cohort`)."""
    parser.add_argument("--inputs", dest="inputs_csv", metavar="CASES.csv",
                        help="CSV manifest: a 'path' column, optional 'case_id' and 'modality' columns")
    parser.add_argument("--recursive", action="store_true",
                        help="search folder inputs: every NIfTI/NRRD/MHA file and every DICOM series is a case")
    parser.add_argument("--workers", type=_positive(int), default=1,
                        help="cases in parallel on a local Dask cluster of this many worker processes "
                             "(above 1 needs the 'cohort' extra; default: %(default)s, in this process)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run the cases on an existing Dask cluster, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--worker-memory", default="3GB",
                        help="memory limit of each local worker; a worker above it is restarted and its case "
                             "recorded as failed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="redo cases done before with the same input and models")
    parser.add_argument("--case-timeout", type=_positive(float), metavar="SECONDS",
                        help="give up a case running longer than this (recorded as failed)")

def _floats(text: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
    return values


def _spacing(text: str) -> tuple[float, ...]:
    values = _floats(text, 3)
    if any(not 0.05 <= v <= 20 for v in values):
        raise argparse.ArgumentTypeError(f"spacing must be between 0.05 and 20 mm, got {text!r}")
    return values


def _listhesis(text: str) -> tuple[str, float]:
    level, _, millimetres = text.partition(":")
    try:
        return level.upper(), float(millimetres)
    except ValueError:
        raise argparse.ArgumentTypeError(f"listhesis must look like L4:6 (level:mm, negative = posterior), got {text!r}") from None


def _fracture(text: str) -> tuple[str, str, float]:
    parts = text.split(":")
    if len(parts) != 3 or parts[1] not in ("wedge", "biconcave", "crush"):
        raise argparse.ArgumentTypeError(f"fracture must look like L1:wedge:30 (wedge|biconcave|crush), got {text!r}")
    try:
        percent = float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"fracture percentage must be a number, got {parts[2]!r}") from None
    if not 0 <= percent <= 60:
        raise argparse.ArgumentTypeError(f"fracture percentage must be 0-60, got {percent}")
    return parts[0].upper(), parts[1], percent


# --- commands -----------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from ..core import anatomy
    from ..phantom import generate_phantom, write_phantom

    try:
        levels = anatomy.parse_level_range(args.levels, t13=args.t13, l6=args.l6)
    except ValueError as error:
        raise SpineLabelError(str(error)) from None
    fractures = {}
    for level, kind, percent in args.fracture or []:
        if level not in levels:
            raise SpineLabelError(f"fracture level {level} is not among the generated levels {levels[0]}-{levels[-1]}")
        fractures[level] = (kind, percent)
    phantom = generate_phantom(
        levels, modality=args.modality, spacing=args.spacing, seed=args.seed, fractures=fractures,
        lordosis_deg=args.lordosis, scoliosis_deg=args.scoliosis, rotation_deg=args.rotation,
        field_of_view=args.fov, physiological_curves=args.physiological_curves,
        listhesis=dict(args.listhesis) if args.listhesis else None)
    from ..core.paths import safe_name

    name = safe_name(args.case or f"phantom_{levels[0]}-{levels[-1]}_{args.modality}_s{args.seed}")
    paths = write_phantom(phantom, Path(args.out), name)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..cohort import DONE, FAILED, SKIPPED, discover, run_cohort
    from ..cohort.tables import case_line as cohort_case_line
    from ..core.options import RunOptions

    if not args.inputs and not args.inputs_csv:       # a usage error: exit 2 with argparse's usage line
        args.usage_error("no inputs: give image files, DICOM folders, a folder with --recursive, or --inputs CSV")
    out = Path(args.out)

    def report(record) -> None:
        if record.status == FAILED:
            where = record.input
            print(f"{PROG}: {record.reason if where in record.reason else where + ': ' + record.reason}",
                  file=sys.stderr)
        elif not args.quiet:
            print(cohort_case_line(out, record))

    cases = discover(args.inputs, manifest=args.inputs_csv, recursive=args.recursive, out=out)
    run = run_cohort(cases, out, RunOptions.from_args(args), workers=args.workers, scheduler=args.scheduler,
                     memory_limit=args.worker_memory, force=args.force, case_timeout=args.case_timeout,
                     progress_bar=not args.quiet, on_record=report)
    if run.count(DONE) + run.count(SKIPPED) and not args.quiet:
        print(f"outputs in {out.resolve()}")
    return 1 if run.count(FAILED) else 0


def case_line(result) -> str:
    """One line per case: what was found and how sure the naming is."""
    from ..naming.confidence import naming_line

    levels = [v.level for v in result.vertebrae if v.level]
    found = f"{len(result.vertebrae)} vertebrae" + (f" {levels[0]}-{levels[-1]}" if levels else "")
    return f"{result.case_id}: {found}; {naming_line(result.naming)}"


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out))


def cmd_relabel(args: argparse.Namespace) -> int:
    from ..naming.labelling import relabel_markups_file

    levels = relabel_markups_file(args.input, args.out)
    print(" ".join(level or "-" for level in levels))
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .pipeline import measure_files

    result = measure_files(args.image, args.seg, args.out, centroids=args.centroids)
    print(f"measured {len(result.measurements)} vertebrae and {len(result.disc_measurements)} discs; "
          f"tables in {Path(args.out).resolve()}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..dataset import export_case

    record = export_case(args.dataset, args.image, args.seg, centroids=args.centroids,
                         original=args.original, replace=args.replace)
    print(f"exported as {record.case_id} into {Path(args.dataset).resolve()}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.finetune import TrainOptions, held_out_lines, train

    options = TrainOptions(init=args.init, iterations=args.iterations, minutes=args.minutes,
                           phantoms=args.phantoms, old_data=Path(args.old_data) if args.old_data else None,
                           holdout_fraction=args.holdout, threads=args.threads, name=args.name, seed=args.seed,
                           kind=args.kind)
    card = train(args.dataset, args.out, options)
    print(f"model {card['name']} written to {Path(args.out).resolve()} (sha256 {card['sha256'][:12]}...)")
    for line in held_out_lines(card):
        print(line)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.families import DEFAULT_FAMILY, families
    from ..models.registry import list_models

    print("model families")
    print("family\trole\ttrainable\tdescription")
    for family in families():
        print(f"{family.name}\t{family.role}\t{'yes' if family.training_recipe else 'no'}\t{family.description}")
    models = list_models()
    print("\ninstalled models")
    if not models:
        print("no models found")
        return 1
    print("name\tversion\tfamily\tmodality\tsha256\ttask")
    for card in models:
        modality = card.get("modality", "")
        modality = ",".join(modality) if isinstance(modality, list) else modality
        family = card.get("architecture", {}).get("family") or DEFAULT_FAMILY
        print(f"{card['name']}\t{card.get('version', '')}\t{family}\t{modality}\t{card.get('sha256', '')[:12]}\t"
              f"{card.get('task', '')}")
    return 0


# --- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Find, name, segment and measure vertebrae in spine CT and MRI.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="detect, name, segment and measure vertebrae; write the output files",
                       description="Run the full pipeline on image files (NIfTI/NRRD/MHA) or DICOM folders. "
                                   "Each case goes to OUT/<case>/.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image file, DICOM series folder, or (--recursive) "
                   "a folder to search")
    p.add_argument("--out", required=True, help="output folder")
    add_run_arguments(p)
    add_cohort_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run, usage_error=p.error)

    p = sub.add_parser("demo", help="run the pipeline on a bundled sample and say where the outputs are")
    p.add_argument("--out", default="spinelabel_demo", help="output folder (default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("phantom", help="generate a synthetic spine with exact ground truth",
                       description="Write <case>.nii.gz, <case>.seg.nrrd, <case>.mrk.json and <case>_truth.json.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--levels", default="T12-L5", help="level range, e.g. T11-L3 (default: %(default)s)")
    p.add_argument("--modality", choices=("ct", "t1", "t2", "random"), default="ct")
    p.add_argument("--spacing", type=_spacing, default=(1.0, 1.0, 1.0), help="voxel size i,j,k in mm, e.g. 0.8,0.8,2")
    p.add_argument("--fracture", type=_fracture, action="append", metavar="LEVEL:TYPE:PCT",
                   help="e.g. L1:wedge:30 (wedge|biconcave|crush); repeatable")
    p.add_argument("--listhesis", type=_listhesis, action="append", metavar="LEVEL:MM",
                   help="e.g. L4:6: L4 slips 6 mm anterior over the level below (negative: posterior); repeatable")
    p.add_argument("--lordosis", type=float, default=0.0, help="sagittal curvature in degrees")
    p.add_argument("--scoliosis", type=float, default=0.0, help="coronal curvature in degrees")
    p.add_argument("--rotation", type=lambda t: _floats(t, 3), default=(0.0, 0.0, 0.0),
                   help="acquisition rotation about R,A,S axes in degrees (oblique grid)")
    p.add_argument("--fov", type=lambda t: _floats(t, 2), metavar="SUP,INF",
                   help="partial field of view: cut SUP mm into the first and INF mm into the last level")
    p.add_argument("--physiological-curves", action="store_true",
                   help="add typical cervical lordosis, thoracic kyphosis and lumbar lordosis")
    p.add_argument("--t13", action="store_true", help="include a T13")
    p.add_argument("--l6", action="store_true", help="include an L6")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", help="case name (default: from levels, modality and seed)")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("relabel", help="assign levels to a centroid point list by anatomical order",
                       description="Locked points keep their labels and anchor the rest; spurious points get an empty label.")
    p.add_argument("input", metavar="IN.mrk.json")
    p.add_argument("--out", required=True, metavar="OUT.mrk.json")
    p.set_defaults(func=cmd_relabel)

    p = sub.add_parser("measure", help="measure vertebral bodies from an image and a body segmentation")
    p.add_argument("--image", required=True)
    p.add_argument("--seg", required=True, help=".seg.nrrd or a label map of level codes")
    p.add_argument("--centroids", help=".mrk.json point list (confidence and locks)")
    p.add_argument("--out", required=True, help="output folder for the CSV tables")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("export", help="add a corrected case to a training dataset (nnU-Net layout)")
    p.add_argument("--image", required=True)
    p.add_argument("--seg", required=True, help="corrected segmentation (.seg.nrrd or label map)")
    p.add_argument("--centroids", help="corrected .mrk.json")
    p.add_argument("--original", help="the model's prediction before correction")
    p.add_argument("--dataset", required=True, help="dataset folder (created if missing)")
    p.add_argument("--replace", action="store_true", help="replace an earlier export of the same image, keeping it in history/")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train or fine-tune a model (detector, body or disc segmenter) on an exported "
                       "dataset folder",
                       description="Fine-tune a model (--init) or train one from scratch on the cases of a dataset "
                                   "folder; writes MODEL_DIR (weights + model card with held-out metrics). "
                                   "Run again with the same --out to continue from MODEL_DIR/work.")
    p.add_argument("--dataset", required=True, help="dataset folder written by 'spinelabel export'")
    p.add_argument("--init", help="model name or folder to start from (default: train from scratch); "
                   "its family decides what is trained, e.g. vertebral-body-segmenter the body segmenter, "
                   "intervertebral-disc-segmenter the disc model (from the label maps' disc labels)")
    from ..training import SCRATCH_FAMILY

    p.add_argument("--kind", choices=tuple(SCRATCH_FAMILY), default="detector",
                   help="what to train from scratch (with --init, the initial model's kind)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="output model folder")
    p.add_argument("--iterations", type=int, default=2000, help="training iterations in total (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=0.0, help="training-time budget in minutes (0 = none)")
    p.add_argument("--phantoms", type=int, default=0, help="synthetic phantoms to generate and mix in")
    p.add_argument("--old-data", metavar="DIR", help="the model's own prepared training data (real_*.npz, "
                   "phantom_*.npz, as its trainer's 'prepare' wrote them) to mix in against forgetting")
    p.add_argument("--holdout", type=float, default=0.2, help="share of cases held out for the model card's "
                   "metrics (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for training (default: all)")
    p.add_argument("--name", help="model name (default: the output folder's name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the slice sampling and augmentation")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the model families and the installed models",
                       description="Model families (what a card's architecture.family means) and every model "
                                   "found in SPINELABEL_MODELS, the source tree and the install prefix.")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpineLabelError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        from ..core.optional import explain_missing

        message = explain_missing(error)
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line for the user, the traceback with -v
        if args.verbose:
            raise
        print(f"{PROG}: internal error: {type(error).__name__}: {error} (run with -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
