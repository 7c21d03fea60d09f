"""Inference core: CXR preprocessing, MONAI bundles, the batched inference engine, phantoms, training."""
