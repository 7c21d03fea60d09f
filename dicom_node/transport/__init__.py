"""DICOM network plumbing shared by the SCP and the SCU: TLS contexts, socket options."""
