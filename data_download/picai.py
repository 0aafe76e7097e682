#!/usr/bin/env python
"""Download PI-CAI images (Zenodo 6624726) + picai_labels into the course's raw layout.

Thin wrapper over prostate_course.download.picai.images_main; run with --help for options.
Example: python data_download/picai.py --folds 0 --prepare
"""
import sys
from pathlib import Path

try:
    import prostate_course  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prostate_course.download.picai import images_main

if __name__ == "__main__":
    sys.exit(images_main())
