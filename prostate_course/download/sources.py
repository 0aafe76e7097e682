"""Where the PI-CAI data comes from: Zenodo record 6624726 (images) and picai_labels (labels).

Images: the Zenodo record's metadata API (``GET <zenodo>/api/records/6624726``) is read at run
time; each ``files[]`` entry gives ``key`` (``picai_public_images_fold<k>.zip``), ``size``,
``checksum`` (``"md5:<hex>"``) and ``links.self`` (the download link). The md5 checked is
the one the record gives, never a copy shipped here.

Labels: the public picai_labels repository at a pinned commit, downloaded as the code archive
of that commit (a tar.gz whose single top folder is ``picai_labels-<commit>``). Git archives
have no published checksum; the archive is verified by that top folder naming the pinned commit
and its sha256 is recorded in the download manifest.

Both hosts can be replaced (mirrors, tests) with environment variables
``PROSTATE_COURSE_ZENODO_URL`` (default ``https://zenodo.org``) and
``PROSTATE_COURSE_LABELS_URL`` (default ``https://codeload.github.com``), or the ``base_url``
arguments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .http import DownloadError, fetch_json

ZENODO_RECORD = "6624726"
ZENODO_ENV = "PROSTATE_COURSE_ZENODO_URL"
ZENODO_DEFAULT = "https://zenodo.org"
RECORD_PAGE = f"https://zenodo.org/records/{ZENODO_RECORD}"
FOLDS = (0, 1, 2, 3, 4)

LABELS_REPO = "DIAGNijmegen/picai_labels"
LABELS_COMMIT = "ce4a4723d7c46d882a6cbaacb40ed6c4be86282f"
LABELS_ENV = "PROSTATE_COURSE_LABELS_URL"
LABELS_DEFAULT = "https://codeload.github.com"
LABELS_PAGE = f"https://github.com/{LABELS_REPO}/tree/{LABELS_COMMIT}"

#: Fallback sizes for an offline dry run ONLY. Approximate (estimated from the case count and
#: typical file sizes, not read from the record): the real ones come from the record at run time.
APPROX_FOLD_BYTES = 6 * 1024**3
APPROX_LABELS_BYTES = 250 * 1024**2


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. ``md5``/``size`` are None when unknown; ``approximate`` marks sizes
    that come from the fallback table rather than from the server."""

    name: str
    url: str
    size: int | None
    md5: str | None
    approximate: bool = False
    page: str = ""


def zenodo_base(base_url: str | None = None) -> str:
    return (base_url or os.environ.get(ZENODO_ENV) or ZENODO_DEFAULT).rstrip("/")


def labels_base(base_url: str | None = None) -> str:
    return (base_url or os.environ.get(LABELS_ENV) or LABELS_DEFAULT).rstrip("/")


def fold_name(fold: int) -> str:
    return f"picai_public_images_fold{int(fold)}.zip"


def labels_name(commit: str = LABELS_COMMIT) -> str:
    return f"picai_labels-{commit}.tar.gz"


def check_folds(folds) -> list[int]:
    out = []
    for f in folds:
        if int(f) not in FOLDS:
            raise ValueError(f"PI-CAI fold {f!r} does not exist: choose among {list(FOLDS)}")
        if int(f) not in out:
            out.append(int(f))
    return out


def images_manual_hint(downloads_dir) -> str:
    return (f"To download by hand: open {RECORD_PAGE} in a browser, download the fold archives "
            f"you need (picai_public_images_fold<k>.zip) and save them, unchanged, in "
            f"{downloads_dir}/ ; then rerun this command: it checks their md5 against the record "
            f"and extracts them.")


def labels_manual_hint(downloads_dir, commit: str = LABELS_COMMIT) -> str:
    return (f"To download by hand: the repository page's 'Download ZIP' gives the newest version, "
            f"not the pinned one; instead download the archive of commit {commit}, "
            f"{LABELS_DEFAULT}/{LABELS_REPO}/tar.gz/{commit} , save it unchanged as "
            f"{downloads_dir}/{labels_name(commit)} and rerun this command. (Repository: "
            f"{LABELS_PAGE})")


def _record_files(record: dict) -> list[dict]:
    files = record.get("files")
    if isinstance(files, dict):          # newer serialisations: {"entries": {...} or [...]}
        files = files.get("entries", files)
        if isinstance(files, dict):
            files = list(files.values())
    if not isinstance(files, list):
        raise DownloadError(f"Zenodo record {ZENODO_RECORD}: unexpected metadata (no file list)")
    return files


def fetch_record(base_url: str | None = None, *, retries: int = 4, backoff: float = 1.0,
                 timeout: float = 30.0, downloads_dir="<data>/downloads", log=print) -> dict:
    """The record's metadata JSON (raises :class:`DownloadError` with advice when offline)."""
    url = f"{zenodo_base(base_url)}/api/records/{ZENODO_RECORD}"
    return fetch_json(url, retries=retries, backoff=backoff, timeout=timeout,
                      manual_hint=images_manual_hint(downloads_dir), log=log)


def image_files(folds, record: dict, base_url: str | None = None) -> list[RemoteFile]:
    """Remote files of the chosen folds, with size, md5 and link taken from ``record``."""
    entries = {}
    for f in _record_files(record):
        key = f.get("key") or f.get("filename")
        if key:
            entries[key] = f
    out = []
    for fold in check_folds(folds):
        name = fold_name(fold)
        f = entries.get(name)
        if f is None:
            raise DownloadError(
                f"Zenodo record {ZENODO_RECORD} has no file {name} (it lists: "
                f"{', '.join(sorted(entries)) or 'nothing'}). The record may have changed: see "
                f"{RECORD_PAGE}.")
        checksum = str(f.get("checksum") or "")
        algo, _, digest = checksum.partition(":")
        if algo.lower() != "md5" or not digest:
            raise DownloadError(f"Zenodo record {ZENODO_RECORD}: {name} has no md5 checksum "
                                f"({checksum!r}); refusing to download unverifiable data.")
        links = f.get("links") or {}
        url = links.get("content") or links.get("self") or links.get("download") or (
            f"{zenodo_base(base_url)}/records/{ZENODO_RECORD}/files/{name}?download=1")
        out.append(RemoteFile(name, url, int(f["size"]) if f.get("size") is not None else None,
                              digest.lower(), page=RECORD_PAGE))
    return out


def approximate_image_files(folds, base_url: str | None = None) -> list[RemoteFile]:
    """Offline fallback for a dry run: the files with APPROXIMATE sizes and no checksum."""
    return [RemoteFile(fold_name(k),
                       f"{zenodo_base(base_url)}/records/{ZENODO_RECORD}/files/{fold_name(k)}",
                       APPROX_FOLD_BYTES, None, approximate=True, page=RECORD_PAGE)
            for k in check_folds(folds)]


def labels_file(base_url: str | None = None, commit: str = LABELS_COMMIT) -> RemoteFile:
    """The picai_labels archive of ``commit`` (size unknown in advance: approximate)."""
    return RemoteFile(labels_name(commit), f"{labels_base(base_url)}/{LABELS_REPO}/tar.gz/{commit}",
                      APPROX_LABELS_BYTES, None, approximate=True, page=LABELS_PAGE)
