"""The TID 1500 Comprehensive 3D SR: build, coded concepts, document wrapper, read back."""
