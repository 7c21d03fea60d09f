"""The delivery step: result objects C-STOREd back to Orthanc with retry/backoff."""
