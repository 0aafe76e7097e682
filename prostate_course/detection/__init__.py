"""Lesion detection on bpMRI (notebook 05), evaluated the way the PI-CAI challenge evaluates it."""
