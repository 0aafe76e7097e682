"""Data: synthetic cohort, PI-CAI readers, prepare, splits and datasets."""
