"""Fetch PI-CAI images and labels into the raw layout, and optionally prepare them.

Layout (docs/ARCHITECTURE.md, "Raw layout")::

    <data_root>/downloads/picai_public_images_fold<k>.zip      (cached archives, verified)
    <data_root>/downloads/picai_labels-<commit>.tar.gz
    <data_root>/raw/picai/images/<pid>/<pid>_<sid>_<seq>.mha   (the zips unpack to <pid>/...)
    <data_root>/raw/picai/labels/...                           (picai_labels at the pinned commit)
    <data_root>/raw/picai/LICENSE_NOTICE.md

The command-line scripts in ``data_download/`` call :func:`images_main` / :func:`labels_main`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

from ..io_utils import sha256_file, write_json_atomic
from ..paths import DATA_ENV, data_root
from . import sources
from .archive import (archive_units, files_present, list_members, load_manifest, manifest_path,
                      safe_extract, uncompressed_size)
from .http import (ChecksumError, DownloadError, check_disk_space, download, forget_verified,
                   free_space, human_size, part_path, read_verified, record_verified)
from .licence import print_license_notice, write_license_notice

#: Extraction needs room beside the archive; the zips hold .mha files that compress little, so
#: before the archive is here (and its exact member sizes known) we budget 1.2 x its size.
EXTRACT_FACTOR = 1.2
DOWNLOAD_MANIFEST = "MANIFEST.json"


def default_raw_dir() -> Path:
    return data_root() / "raw" / "picai"


def default_downloads_dir() -> Path:
    return data_root() / "downloads"


def _record_download(downloads: Path, name: str, info: dict) -> None:
    """Keep ``<downloads>/MANIFEST.json``: one entry per verified archive (url, size, hashes)."""
    path = downloads / DOWNLOAD_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        manifest = {}
    manifest[name] = {**info, "verified_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds")}
    write_json_atomic(path, manifest, sort_keys=True)


def _extraction_complete(target: Path, archive_name: str) -> bool:
    """True if an earlier run extracted every unit of ``archive_name`` and they are all intact."""
    rec = load_manifest(manifest_path(target, archive_name))
    return bool(rec.get("complete")) and all(files_present(target, files)
                                             for files in rec.get("units", {}).values())


def _mark_complete(target: Path, archive: Path) -> None:
    mpath = manifest_path(target, archive)
    rec = json.loads(mpath.read_text()) if mpath.is_file() else {}
    rec["complete"] = True
    write_json_atomic(mpath, rec)


# ----------------------------------------------------------------------------------- images
def plan_images(folds, *, base_url=None, downloads=None, retries=4, backoff=1.0, timeout=30.0,
                log=print) -> list[sources.RemoteFile]:
    """The fold archives with size and md5 from the record's metadata (needs the network)."""
    record = sources.fetch_record(base_url, retries=retries, backoff=backoff, timeout=timeout,
                                  downloads_dir=downloads or default_downloads_dir(), log=log)
    return sources.image_files(folds, record, base_url)


def fetch_images(folds=(0,), *, raw_dir=None, downloads=None, max_cases=None, base_url=None,
                 retries=5, backoff=1.0, timeout=60.0, progress=True, delete_archives=False,
                 log=print) -> dict:
    """Download (resume/verify) the fold archives and extract them into ``<raw_dir>/images``.

    ``max_cases`` limits the cases EXTRACTED (the first N patient folders, fold by fold); the
    download unit is always a whole fold archive. Returns a summary dict.
    """
    raw_dir = Path(raw_dir) if raw_dir else default_raw_dir()
    downloads = Path(downloads) if downloads else default_downloads_dir()
    images = raw_dir / "images"
    folds = sources.check_folds(folds)
    hint = sources.images_manual_hint(downloads)
    summary = {"images": str(images), "folds": folds, "downloaded": [], "cached": [],
               "extracted_cases": 0, "skipped_cases": 0, "cases": []}

    # A fold fully extracted earlier whose archive was then deleted (--delete-archives) is done.
    todo = [k for k in folds if not (_extraction_complete(images, sources.fold_name(k))
                                     and not (downloads / sources.fold_name(k)).exists())]
    done_without_archive = [k for k in folds if k not in todo]
    remaining = max_cases
    for k in done_without_archive:
        log(f"{sources.fold_name(k)}: already extracted and verified (archive deleted); skipping.")
        n_units = len(json.loads(manifest_path(images, sources.fold_name(k)).read_text())["units"])
        summary["skipped_cases"] += n_units
        if remaining is not None:
            remaining -= min(remaining, n_units)
    if remaining is not None and remaining <= 0:
        todo = []
    files = plan_images(todo, base_url=base_url, downloads=downloads, retries=retries,
                        backoff=backoff, log=log) if todo else []

    # Disk space: what is still to download + room to extract it.
    need = 0
    for f in files:
        dest = downloads / f.name
        if read_verified(dest) is None:  # (an archive already here is checked exactly below)
            part = part_path(dest)
            have = part.stat().st_size if part.exists() else 0
            need += max((f.size or 0) - have, 0) + int(EXTRACT_FACTOR * (f.size or 0))
    if files:
        check_disk_space(downloads, need, f"{len(files)} PI-CAI fold archive(s) and their "
                                          f"extraction")

    for f in files:
        dest = downloads / f.name
        if remaining is not None and remaining <= 0:
            log(f"{f.name}: not needed, --max-cases {max_cases} is reached; skipping it.")
            continue
        cached = read_verified(dest) is not None
        download(f.url, dest, md5=f.md5, size=f.size, retries=retries, backoff=backoff,
                 timeout=timeout, progress=progress, manual_hint=hint, log=log)
        (summary["cached"] if cached else summary["downloaded"]).append(f.name)
        _record_download(downloads, f.name, {"url": f.url, "size": f.size, "md5": f.md5,
                                             "source": sources.RECORD_PAGE})
        units = archive_units(dest)
        if remaining is not None:
            units = units[:max(remaining, 0)]
            remaining -= len(units)
        if not units:
            continue
        # exact room for the case folders not yet there (sizes from the archive's member list)
        missing = [u for u in units if not (images / u).exists()]
        if missing:
            check_disk_space(images, uncompressed_size(dest, units=missing),
                             f"extracting {len(missing)} case folder(s) of {f.name}")
            log(f"{f.name}: extracting {len(missing)} of {len(units)} case folder(s) into "
                f"{images}")
        write_license_notice(raw_dir)  # beside the data, from the first byte written there
        rep = safe_extract(dest, images, select=units, progress=progress)
        summary["extracted_cases"] += len(rep.extracted)
        summary["skipped_cases"] += len(rep.skipped)
        summary["cases"] += units
        if max_cases is None:
            _mark_complete(images, dest)
            if delete_archives:
                dest.unlink()
                forget_verified(dest)
                log(f"{f.name}: extracted and verified; archive deleted (--delete-archives).")
    return summary


# ----------------------------------------------------------------------------------- labels
def _verify_labels_archive(archive: Path, commit: str) -> None:
    """The archive of a commit has exactly one top folder, ``picai_labels-<commit>``."""
    tops = sorted({m.path.split("/", 1)[0] for m in list_members(archive)})
    if len(tops) != 1 or commit not in tops[0]:
        raise ChecksumError(
            f"{archive.name} is not the picai_labels archive of commit {commit}: its top-level "
            f"folder(s) are {tops[:5]}; the file was removed and will not be used.")


def fetch_labels(*, raw_dir=None, downloads=None, base_url=None, commit=sources.LABELS_COMMIT,
                 retries=5, backoff=1.0, timeout=60.0, progress=True, log=print) -> Path:
    """Download picai_labels at ``commit`` and extract it into ``<raw_dir>/labels``."""
    raw_dir = Path(raw_dir) if raw_dir else default_raw_dir()
    downloads = Path(downloads) if downloads else default_downloads_dir()
    labels = raw_dir / "labels"
    remote = sources.labels_file(base_url, commit)
    dest = downloads / remote.name
    rec = read_verified(dest)
    if rec is None or rec.get("commit") != commit:
        check_disk_space(downloads, 3 * (remote.size or 0), "the picai_labels archive (approximate"
                                                            " size) and its extraction")
        download(remote.url, dest, retries=retries, backoff=backoff, timeout=timeout,
                 progress=progress, manual_hint=sources.labels_manual_hint(downloads, commit),
                 log=log)
        try:
            _verify_labels_archive(dest, commit)
        except Exception:
            dest.unlink(missing_ok=True)
            forget_verified(dest)
            raise
        digest = sha256_file(dest)
        record_verified(dest, sha256=digest, commit=commit, url=remote.url)
        _record_download(downloads, remote.name, {"url": remote.url, "commit": commit,
                                                  "sha256": digest, "size": dest.stat().st_size,
                                                  "source": sources.LABELS_PAGE})
    write_license_notice(raw_dir)
    rep = safe_extract(dest, labels, strip_components=1, progress=progress)
    _mark_complete(labels, dest)
    marksheet = labels / "clinical_information" / "marksheet.csv"
    if not marksheet.is_file():
        raise DownloadError(f"{dest.name} extracted into {labels}, but {marksheet} is missing: "
                            f"this is not the expected picai_labels layout.")
    log(f"labels: {len(rep.extracted)} item(s) extracted, {len(rep.skipped)} already present "
        f"in {labels}")
    return labels


# ---------------------------------------------------------------------------------- dry run
def dry_run(folds=(0,), *, labels=True, raw_dir=None, downloads=None, base_url=None,
            labels_url=None, max_cases=None, retries=1, backoff=0.5, log=print) -> str:
    """Text listing what would be fetched, with sizes (exact from the record when online)."""
    raw_dir = Path(raw_dir) if raw_dir else default_raw_dir()
    downloads = Path(downloads) if downloads else default_downloads_dir()
    lines = []
    try:
        files = plan_images(folds, base_url=base_url, downloads=downloads, retries=retries,
                            backoff=backoff, timeout=15.0, log=lambda *_: None)
        lines.append(f"Sizes and md5 from Zenodo record {sources.ZENODO_RECORD}'s metadata:")
    except DownloadError as e:
        files = sources.approximate_image_files(folds, base_url)
        first = str(e).splitlines()[0]
        lines.append(f"Offline or record unavailable ({first})")
        lines.append("Sizes below are APPROXIMATE (built-in table, not from the record):")
    total = 0
    for f in files:
        dest = downloads / f.name
        part = part_path(dest)
        state = ("already downloaded and verified" if read_verified(dest) else
                 f"partial: {human_size(part.stat().st_size)} will resume" if part.exists() else
                 "to download")
        approx = "~" if f.approximate else ""
        md5 = f"md5 {f.md5}" if f.md5 else "md5 from the record at download time"
        lines.append(f"  {f.name:36s} {approx}{human_size(f.size):>10s}  {md5}  [{state}]")
        lines.append(f"      {f.url}")
        total += f.size or 0
    if labels:
        lf = sources.labels_file(labels_url)
        state = "already downloaded and verified" if read_verified(downloads / lf.name) else \
            "to download"
        lines.append(f"  {lf.name:36s} ~{human_size(lf.size):>9s}  verified by commit "
                     f"{sources.LABELS_COMMIT[:12]} + sha256 recorded  [{state}]")
        lines.append(f"      {lf.url}")
        total += lf.size or 0
    approx_total = any(f.approximate for f in files) or labels
    lines.append(f"Total download: {'~' if approx_total else ''}"
                 f"{human_size(total)}; extraction needs about as much again.")
    lines.append(f"Archives -> {downloads}")
    lines.append(f"Images   -> {raw_dir / 'images'}" + (
        f" (only the first {max_cases} case folders are extracted; whole fold archives are "
        f"still downloaded)" if max_cases is not None else ""))
    if labels:
        lines.append(f"Labels   -> {raw_dir / 'labels'}")
    probe, free = free_space(downloads)
    lines.append(f"Free disk at {probe}: {human_size(free)}")
    text = "\n".join(lines)
    log(text)
    return text


# ---------------------------------------------------------------------------------- prepare
def picai_profile(profile: str = "gpu", max_cases=None):
    """``profile`` with ``data.source = picai`` (and ``data.n_cases = max_cases`` if given)."""
    from ..profile import load_profile

    overrides = {"data.source": "picai"}
    if max_cases is not None:
        overrides["data.n_cases"] = int(max_cases)
    return load_profile(profile, overrides)


def run_command(profile: str = "gpu", max_cases=None) -> str:
    """The command that runs the course on the prepared PI-CAI data."""
    extra = f" --set data.n_cases={int(max_cases)}" if max_cases is not None else ""
    return f"prostate-course run --profile {profile} --set data.source=picai{extra}"


def prepare(raw_dir=None, *, profile: str = "gpu", max_cases=None, workers=None,
            progress=True, log=print) -> Path:
    """Prepare the downloaded data exactly where the notebooks will look for it.

    Calls the data code's own ``ensure_dataset`` on ``profile`` with ``data.source = picai``
    (``data.n_cases = max_cases`` if given), so the prepared folder,
    ``<data root>/prepared/picai-<hash>``, is the one ``ensure_dataset`` finds later (its key
    hashes the marksheet, the case folders present and the prepare parameters). ``raw_dir``
    must be ``<root>/raw/picai``; ``<root>`` is used as the data root for this call.
    """
    raw_dir = Path(raw_dir).resolve() if raw_dir else default_raw_dir()
    if raw_dir.name != "picai" or raw_dir.parent.name != "raw":
        raise ValueError(
            f"--prepare needs the course's raw layout <data root>/raw/picai, but the data is in "
            f"{raw_dir}. Use --dest <data root>/raw/picai (or leave --dest out and set "
            f"{DATA_ENV}), or run prepare_dataset on {raw_dir}/images and {raw_dir}/labels "
            f"yourself.")
    root = raw_dir.parent.parent
    from ..data.dataset import ensure_dataset  # imported late: torch and the data code are heavy

    old = os.environ.get(DATA_ENV)
    os.environ[DATA_ENV] = str(root)
    try:
        ds = ensure_dataset(picai_profile(profile, max_cases), workers=workers, progress=progress)
    finally:
        if old is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = old
    cmd = run_command(profile, max_cases)
    if root != data_root():
        cmd = f"{DATA_ENV}={root} {cmd}"
    log(f"Prepared dataset: {ds.root} ({len(ds)} cases). Run the course on it with:\n  {cmd}")
    return Path(ds.root)


# ------------------------------------------------------------------------------------- CLI
def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=Path, default=None,
                   help=f"raw PI-CAI folder (default: <data root>/raw/picai; the data root is "
                        f"${DATA_ENV} if set, else data/ in the repository). images/ and labels/ "
                        f"are created inside.")
    p.add_argument("--downloads", type=Path, default=None,
                   help="where archives are cached (default: <data root>/downloads)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be fetched and how large it is; download nothing")
    p.add_argument("--retries", type=int, default=5, help="retries per file (default 5)")
    p.add_argument("--backoff", type=float, default=2.0,
                   help="first retry delay in seconds, doubled each retry (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s (default 60)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--labels-url", default=None,
                   help=f"base URL of the labels archive host (mirror); default ${sources.LABELS_ENV} "
                        f"or {sources.LABELS_DEFAULT}")


def _fail(e: BaseException) -> int:
    print(f"\nERROR: {e}", file=sys.stderr)
    return 1


def images_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="data_download/picai.py",
        description="Download the PI-CAI public images (Zenodo record 6624726, CC BY-NC 4.0) and "
                    "the picai_labels annotations at a pinned commit into the course's raw "
                    "layout; optionally prepare them for the notebooks. Downloads resume after "
                    "interruption and are verified (md5 from the record) before use.",
        epilog="Examples:  python data_download/picai.py --folds 0 --dry-run\n"
               "           python data_download/picai.py --folds 0 --prepare\n"
               "           python data_download/picai.py --profile full   # all 5 folds",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, nargs="+", default=None, metavar="K",
                   help="which of the 5 fold archives (0-4); default: the profile's "
                        "data.download_folds (gpu: 0, ~300 cases, a Colab-sized subset; full: "
                        "all five)")
    p.add_argument("--max-cases", type=int, default=None, metavar="N",
                   help="extract and prepare only the first N cases. NOTE: the download unit is "
                        "still a whole fold archive (several GB); this limits extraction and "
                        "preparation, not the download")
    p.add_argument("--no-labels", action="store_true", help="skip picai_labels")
    p.add_argument("--prepare", action="store_true",
                   help="after downloading, run prepare so the notebooks can use the data "
                        "(prostate-course run --profile gpu --set data.source=picai)")
    p.add_argument("--profile", default="gpu",
                   help="profile whose download_folds, spacing, crop and split are used "
                        "(default gpu)")
    p.add_argument("--workers", type=int, default=None, help="prepare worker processes")
    p.add_argument("--delete-archives", action="store_true",
                   help="delete each fold archive once fully extracted and verified (saves "
                        "disk; later runs skip it)")
    p.add_argument("--zenodo-url", default=None,
                   help=f"base URL of the Zenodo host (mirror); default ${sources.ZENODO_ENV} or "
                        f"{sources.ZENODO_DEFAULT}")
    _common_args(p)
    a = p.parse_args(argv)
    if a.max_cases is not None and a.max_cases < 1:
        p.error("--max-cases must be >= 1")
    try:
        if a.folds is None:
            from ..profile import load_profile

            a.folds = load_profile(a.profile).download_folds
        folds = sources.check_folds(a.folds)
    except (ValueError, KeyError) as e:  # a bad fold, or an unknown profile
        p.error(str(e))
    print_license_notice()
    if a.dry_run:
        dry_run(folds, labels=not a.no_labels, raw_dir=a.dest, downloads=a.downloads,
                base_url=a.zenodo_url, labels_url=a.labels_url, max_cases=a.max_cases)
        return 0
    raw = a.dest or default_raw_dir()
    try:
        s = fetch_images(folds, raw_dir=raw, downloads=a.downloads, max_cases=a.max_cases,
                         base_url=a.zenodo_url, retries=a.retries, backoff=a.backoff,
                         timeout=a.timeout, progress=not a.quiet,
                         delete_archives=a.delete_archives)
        print(f"images: {s['extracted_cases']} case(s) extracted, {s['skipped_cases']} already "
              f"present, in {s['images']}")
        if not a.no_labels:
            fetch_labels(raw_dir=raw, downloads=a.downloads, base_url=a.labels_url,
                         retries=a.retries, backoff=a.backoff, timeout=a.timeout,
                         progress=not a.quiet)
        if a.prepare:
            prepare(raw, profile=a.profile, max_cases=a.max_cases, workers=a.workers,
                    progress=not a.quiet)
    except (DownloadError, OSError, RuntimeError, ValueError) as e:
        return _fail(e)
    if not a.prepare:
        print(f"Next: the course prepares the data on first use: {run_command(a.profile, a.max_cases)}"
              f"\n(or prepare now: rerun with --prepare)")
    print(f"Done. Licence notice: {Path(raw) / 'LICENSE_NOTICE.md'}")
    return 0


def labels_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="data_download/picai_labels.py",
        description=f"Download the PI-CAI annotations (picai_labels, commit "
                    f"{sources.LABELS_COMMIT}, CC BY-NC 4.0) into <raw>/labels: lesion masks "
                    f"(human_expert/resampled + Pooch25), whole-gland and zonal masks, "
                    f"marksheet. The archive is verified by its commit; its sha256 is recorded.")
    _common_args(p)
    a = p.parse_args(argv)
    print_license_notice()
    if a.dry_run:
        downloads = a.downloads or default_downloads_dir()
        lf = sources.labels_file(a.labels_url)
        print(f"  {lf.name}  ~{human_size(lf.size)} (approximate)\n      {lf.url}\n"
              f"Archive -> {downloads}\nLabels  -> {(a.dest or default_raw_dir()) / 'labels'}")
        return 0
    raw = a.dest or default_raw_dir()
    try:
        fetch_labels(raw_dir=raw, downloads=a.downloads, base_url=a.labels_url,
                     retries=a.retries, backoff=a.backoff, timeout=a.timeout,
                     progress=not a.quiet)
    except (DownloadError, OSError, RuntimeError, ValueError) as e:
        return _fail(e)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(images_main())
