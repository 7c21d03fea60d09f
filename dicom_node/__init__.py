"""cxr-ai-node: a DICOM node that analyses chest X-rays with MONAI bundles and returns SR + SC to Orthanc."""

__version__ = "0.1.0"
