"""Orthanc configuration shipped with the node (``orthanc.json``) and its renderer (``config.py``)."""
