"""Headless SpineLabel: the same arguments, outputs and exit status as `spinelabel run`, inside Slicer.

    Slicer --no-main-window --python-script <ext>/SpineLabel/Scripts/batch.py -- INPUT... --out DIR \
        [--model NAME] [--modality auto|ct|mr] [--segmenter auto|none|NAME] [--input-mode slices|mip]

Inputs are read with Slicer's own volume storage node (DICOM folders through the engine), so the grid
is exactly what Slicer shows; the segmentation and the point list are written by Slicer's storage nodes
after the engine has written the whole output contract. Uses only MRML classes and storage nodes, so
it also runs with the PyPI `slicer-core` package (a bare `vtkMRMLScene` when there is no application).
Exit status: 0 when every case succeeded, 1 when some failed (the others are complete), 2 for usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "SpineLabel batch"


def _make_engine_importable() -> None:
    """Built extension: SpineLabelLib sits beside the module; source checkout: at the repository root."""
    try:
        import SpineLabelLib  # noqa: F401
        return
    except ImportError:
        pass
    here = Path(__file__).resolve()
    for folder in (here.parents[1], here.parents[2]):
        if (folder / "SpineLabelLib" / "__init__.py").exists():
            sys.path.insert(0, str(folder))
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="detect, name, segment and measure vertebrae "
                                     "in 3D Slicer without a window; writes the `spinelabel run` outputs")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file or DICOM series folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", help="bundled model name or a model folder (default: the bundled vertebra-detector, one model for CT and MRI)")
    parser.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto")
    parser.add_argument("--segmenter", default="auto",
                        help="body-mask segmenter: auto (bundled when installed), none, or a model name or folder")
    parser.add_argument("--input-mode", choices=("slices", "mip"), default="slices",
                        help="sagittal slices (default) or, for CT, the sagittal MIP of the spine's slab")
    return parser


def _scene():
    """Slicer's scene inside the application, else a fresh one prepared for segmentations and markups."""
    import slicer

    from SpineLabelLib import scene as adapter

    existing = getattr(slicer, "mrmlScene", None)
    return adapter.prepare_scene(existing) if existing is not None else adapter.new_scene()


def _read_input(mrml, path: Path):
    """A volume node for the input: files via Slicer's storage node, DICOM folders via the engine."""
    from SpineLabelLib import scene as adapter
    from SpineLabelLib.volume import case_id, load_volume, validate

    if path.is_dir():
        return adapter.volume_to_node(mrml, load_volume(path), case_id(path))
    if not path.exists():
        from SpineLabelLib.errors import InputError

        raise InputError(f"{path}: no such file or folder")
    node = adapter.read_volume_file(mrml, path, case_id(path))
    validate(adapter.node_to_volume(node), str(path))
    return node


def run_case(mrml, path: Path, args: argparse.Namespace) -> Path:
    """One input: read -> engine (detect, measure, write contract) -> Slicer-written .seg.nrrd/.mrk.json."""
    from SpineLabelLib import pipeline
    from SpineLabelLib import scene as adapter
    from SpineLabelLib.outputs import case_files
    from SpineLabelLib.summary import sha256_file
    from SpineLabelLib.volume import case_id

    volume_node = _read_input(mrml, path)
    created = [volume_node]
    try:
        result = pipeline.case_from_volume(adapter.node_to_volume(volume_node), case_id(path))
        result.input_path, result.input_sha256 = str(path), sha256_file(path)
        pipeline.detect(result, model=args.model, modality=args.modality, segmenter=args.segmenter,
                        input_mode=args.input_mode)
        pipeline.measure(result)
        folder = pipeline.write_outputs(result, args.out)
        nodes = adapter.result_to_nodes(mrml, result, volume_node)
        created += [nodes.segmentation, nodes.points, nodes.table]
        if nodes.alignment is not None:      # endplate lines and the alignment table
            created += [nodes.alignment.table, *nodes.alignment.lines.values()]
        names = case_files(result.case_id)
        adapter.write_segmentation_file(nodes.segmentation, folder / names["segmentation"])
        adapter.write_markups_file(nodes.points, folder / names["markups"])
        return folder
    finally:
        for node in created:
            if node is not None and node.GetScene() is not None:
                mrml.RemoveNode(node)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:           # Slicer may forward the separator itself
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:       # argparse: --help (0) or a usage error (2)
        return int(stop.code or 0)
    _make_engine_importable()
    from SpineLabelLib.errors import SpineLabelError

    mrml = _scene()
    failures = 0
    for text in args.inputs:
        path = Path(text)
        try:
            folder = run_case(mrml, path, args)
            print(f"{PROG}: {path.name}: outputs in {folder.resolve()}")
        except SpineLabelError as error:
            failures += 1
            message = str(error)
            print(f"{PROG}: error: {message if str(path) in message else f'{path}: {message}'}", file=sys.stderr)
        except Exception as error:   # a bug or a Slicer failure: still one line, and the next case runs
            failures += 1
            print(f"{PROG}: internal error: {path}: {type(error).__name__}: {error}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
