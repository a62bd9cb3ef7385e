"""Headless SpineLabel: the same arguments, outputs and exit status as `spinelabel run`, inside Slicer.

    Slicer --no-main-window --python-script <ext>/SpineLabel/Scripts/batch.py -- INPUT... --out DIR \
        [--model NAME] [--modality auto|ct|mr] [--segmenter auto|none|NAME] [--input-mode slices|mip]

Inputs are read with Slicer's own volume storage node (DICOM folders through the engine), so the grid
is exactly what Slicer shows; the segmentation and the point list are written by Slicer's storage nodes,
inside the engine's atomic write of the output contract (a failure leaves no half-updated case). Uses only MRML classes and storage nodes, so
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
    _make_engine_importable()
    from SpineLabelLib.core.options import add_run_arguments

    parser = argparse.ArgumentParser(prog=PROG, description="detect, name, segment and measure vertebrae "
                                     "in 3D Slicer without a window; writes the `spinelabel run` outputs")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file or DICOM series folder")
    parser.add_argument("--out", required=True, help="output folder")
    add_run_arguments(parser)
    return parser


def _scene():
    """Slicer's scene inside the application, else a fresh one prepared for segmentations and markups."""
    import slicer

    from SpineLabelLib.slicer_adapter import scene as adapter

    existing = getattr(slicer, "mrmlScene", None)
    return adapter.prepare_scene(existing) if existing is not None else adapter.new_scene()


def _read_input(mrml, path: Path):
    """A volume node for the input: files via Slicer's storage node, DICOM folders via the engine."""
    from SpineLabelLib.slicer_adapter import scene as adapter
    from SpineLabelLib.core.volume import case_id, load_volume, validate

    if path.is_dir():
        return adapter.volume_to_node(mrml, load_volume(path), case_id(path))
    if not path.exists():
        from SpineLabelLib.core.errors import InputError

        raise InputError(f"{path}: no such file or folder")
    node = adapter.read_volume_file(mrml, path, case_id(path))
    validate(adapter.node_to_volume(node), str(path))
    return node


def run_case(mrml, path: Path, options, out: Path) -> Path:
    """One input: read -> engine (detect, measure) -> the output contract, with the .seg.nrrd and the
    .mrk.json written by Slicer's storage nodes inside the engine's atomic step."""
    from SpineLabelLib.app import pipeline
    from SpineLabelLib.slicer_adapter import scene as adapter
    from SpineLabelLib.io.summary import sha256_file
    from SpineLabelLib.core.volume import case_id

    pipeline.check_dicom_seg_inputs([path], options)     # before reading: one line, nothing written
    volume_node = _read_input(mrml, path)
    created = [volume_node]
    try:
        result = pipeline.case_from_volume(adapter.node_to_volume(volume_node), case_id(path))
        result.input_path, result.input_sha256 = str(path), sha256_file(path)
        if options.dicom_seg and path.is_dir():    # the SEG references the series' files; the node forgets them
            from SpineLabelLib.core.volume import dicom_series_files

            result.image.metadata["dicom_files"] = list(dicom_series_files(path))
        pipeline.analyse(result, options)           # bodies, names, discs, measurements
        nodes = adapter.result_to_nodes(mrml, result, volume_node)
        created += [nodes.segmentation, nodes.points, nodes.table]
        if nodes.disc_table is not None:
            created.append(nodes.disc_table)
        if nodes.alignment is not None:      # endplate lines and the alignment table
            created += [nodes.alignment.table, *nodes.alignment.lines.values()]
        slicer_writers = {"segmentation": lambda target: adapter.write_segmentation_file(nodes.segmentation, target),
                          "markups": lambda target: adapter.write_markups_file(nodes.points, target)}
        return pipeline.write_outputs(result, out, slicer_writers, dicom_seg=options.dicom_seg)
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
    from SpineLabelLib.core.errors import SpineLabelError
    from SpineLabelLib.core.options import RunOptions

    try:
        options = RunOptions.from_args(args)
    except SpineLabelError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    mrml = _scene()
    failures = 0
    for text in args.inputs:
        path = Path(text)
        try:
            folder = run_case(mrml, path, options, Path(args.out))
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
