"""Training: one loop (`loop`), one recipe per model family (`recipes`), the from-scratch command lines
(`detector`, `segmenter`), `spinelabel train` on a dataset folder (`finetune`) and the scoring rules
shared with bench/ (`evaluation`). Importing this package imports neither numpy nor torch."""

#: The family `spinelabel train --kind` trains from scratch (with --init, the initial model's family).
SCRATCH_FAMILY = {"detector": "mask-rcnn-slices", "segmenter": "body-unet", "disc-segmenter": "disc-unet"}
