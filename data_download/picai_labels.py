#!/usr/bin/env python
"""Download the PI-CAI annotations (picai_labels at the pinned commit) into <raw>/labels.

Thin wrapper over prostate_course.download.picai.labels_main; run with --help for options.
(data_download/picai.py fetches the labels too, unless --no-labels.)
"""
import sys
from pathlib import Path

try:
    import prostate_course  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prostate_course.download.picai import labels_main

if __name__ == "__main__":
    sys.exit(labels_main())
