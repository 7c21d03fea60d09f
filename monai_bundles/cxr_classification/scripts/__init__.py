"""Standalone code of the cxr_classification bundle (``configs/inference.json`` ``run``); never imported by the node."""
