"""The result objects sent back: TID 1500 SR (``sr/``), Secondary Capture overlay (``sc/``), deterministic UIDs."""
