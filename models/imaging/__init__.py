"""DICOM pixels to network input: decoding, preprocessing, geometry (shared by inference and training)."""
