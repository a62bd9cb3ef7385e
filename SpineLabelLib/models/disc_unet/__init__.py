"""The disc segmenter: a small 2-D U-Net drawing one intervertebral disc on sagittal slices of a crop
centred between two found vertebral bodies (MRI); `geometric` is the CT method (and the fallback)."""
