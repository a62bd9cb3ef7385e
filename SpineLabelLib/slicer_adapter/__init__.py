"""The Slicer adapter: translates between MRML nodes and the engine's records and results (`scene`)."""
