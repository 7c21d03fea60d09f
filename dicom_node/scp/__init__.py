"""The receiving step: the DICOM SCP (C-ECHO, C-STORE), who may associate, what is analysed, the deflate-bomb guard."""
