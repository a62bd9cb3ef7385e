"""The body segmenter: a 2-D U-Net that redraws the detector's vertebral-body masks at 1 mm.

`infer.refine_instances(volume, instances, network, modality)` is called by `detector.detect`
when the segmenter model is installed; `train` builds it from scratch (see its docstring).
"""
