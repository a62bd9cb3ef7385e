"""slicer_adapter"""
