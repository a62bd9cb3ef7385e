"""SpineLabel engine: find, name, segment and measure vertebrae in spine CT and MRI.

Pure Python (numpy, SimpleITK, scikit-image, torch); no Qt. The Slicer module, the `spinelabel`
command and the headless batch script all call these functions.
"""
__version__ = "0.1.0"
