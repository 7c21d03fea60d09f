"""Standalone code of the cxr_opacity_detection bundle (``configs/inference.json`` ``run``); never imported by the node."""
