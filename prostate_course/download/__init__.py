"""Robust download and safe extraction of the real data (PI-CAI images and labels).

- :mod:`.http`: :func:`download` (resume with HTTP Range, retries with back-off, md5/size check,
  ``.part`` then rename), :func:`fetch_json`, :func:`check_disk_space`; errors
  :class:`DownloadError`, :class:`ChecksumError`, :class:`InsufficientSpaceError`.
- :mod:`.archive`: :func:`safe_extract` (zip/tar; refuses absolute paths, ``..``, links
  leaving the target, before writing anything; idempotent via a per-archive manifest).
- :mod:`.sources`: Zenodo record 6624726 fold archives, picai_labels at a pinned commit.
- :mod:`.picai`: :func:`fetch_images`, :func:`fetch_labels`, :func:`dry_run`, :func:`prepare`
  and the command-line entry points used by ``data_download/``.
- :mod:`.licence`: the CC BY-NC 4.0 notice printed and written beside the data.
"""
from .archive import (ArchiveError, UnsafeArchiveError, archive_units, list_members,
                      safe_extract)
from .http import (ChecksumError, DownloadError, InsufficientSpaceError, check_disk_space,
                   download, fetch_json, md5_file)
from .licence import LICENSE_NOTICE, write_license_notice
from .picai import dry_run, fetch_images, fetch_labels, picai_profile, prepare, run_command
from .sources import LABELS_COMMIT, ZENODO_RECORD

__all__ = [
    "ArchiveError", "UnsafeArchiveError", "archive_units", "list_members", "safe_extract",
    "ChecksumError", "DownloadError", "InsufficientSpaceError", "check_disk_space", "download",
    "fetch_json", "md5_file", "LICENSE_NOTICE", "write_license_notice", "dry_run",
    "fetch_images", "fetch_labels", "picai_profile", "prepare", "run_command", "LABELS_COMMIT",
    "ZENODO_RECORD",
]
