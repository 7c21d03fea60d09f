"""Orthanc Python plug-in that routes stable CXR studies to the node (``cxr_router.py`` is loaded by Orthanc)."""
