"""Training/evaluation data on disk: the RSNA layout reader, the patient-level split."""
