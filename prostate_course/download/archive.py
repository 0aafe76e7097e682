"""Safe, idempotent extraction of zip and tar archives.

Why hand-written: ``zipfile.extractall`` silently rewrites unsafe names, ``tarfile``'s
``filter="data"`` exists only on recent Pythons (3.12 / back-ports), and neither checks the
whole archive before writing, nor skips what an earlier run already extracted.

Rules (checked for EVERY member before anything is written):

- a member with an absolute path (``/x``, ``C:\\x``), or a ``..`` component, is refused;
- a symlink whose target is absolute or leaves the extraction folder is refused, and so is a
  hardlink to a path outside it; device files and FIFOs are refused;
- refusals raise :class:`UnsafeArchiveError` naming the member.

Extraction works in *units*: the first path component below the target (one PI-CAI case folder
``<pid>/`` for the image zips; one top-level folder for picai_labels). Each unit is extracted
into a temporary sibling and renamed into place, so a unit is either complete or absent. A
manifest ``<target>/.extracted/<archive>.json`` records every unit's files with size and CRC;
a later run skips units whose files are all present with the recorded sizes.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..io_utils import write_json_atomic

MANIFEST_DIR = ".extracted"


class ArchiveError(RuntimeError):
    """An archive cannot be read or is corrupt (message names the archive and member)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would write outside the extraction folder ("zip slip")."""


@dataclass
class Member:
    """One archive member after validation. ``path`` is relative, POSIX, components stripped."""

    path: str
    kind: str                 # "file" | "dir" | "symlink" | "hardlink"
    size: int
    crc: int | None = None    # zip CRC-32 (tar has none)
    link: str | None = None   # symlink target (as stored) or hardlink target (stripped path)
    raw: object = field(default=None, repr=False)

    @property
    def unit(self) -> str:
        return self.path.split("/", 1)[0]


@dataclass
class ExtractReport:
    archive: str
    target: Path
    extracted: list[str] = field(default_factory=list)   # units written this run
    skipped: list[str] = field(default_factory=list)     # units already present and verified
    n_files: int = 0                                     # files written this run


_DRIVE = re.compile(r"^[A-Za-z]:")


def _safe_parts(name: str, archive: Path) -> list[str]:
    """Path components of member ``name``; raise if absolute or containing ``..``."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} has an absolute path; refusing to extract "
            f"anything from this archive.")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"{archive.name}: member {name!r} contains a '..' component (it would write outside "
            f"the target folder); refusing to extract anything from this archive.")
    return parts


def _check_symlink(path: str, target: str, archive: Path, name: str,
                   links: dict[str, str] | None = None) -> None:
    """Refuse a symlink whose target is absolute or leads outside the extraction folder.

    The target is followed component by component, through the archive's other symlinks
    (``links``: member path -> target), because ``..`` after a link climbs from where the link
    points, not from where it sits: ``up -> ..`` then ``x -> up/..`` leaves the folder although
    each looks harmless on its own.
    """
    t = target.replace("\\", "/")
    if t.startswith("/") or _DRIVE.match(t):
        raise UnsafeArchiveError(
            f"{archive.name}: symlink member {name!r} points to the absolute path {target!r}; "
            f"refusing to extract anything from this archive.")
    links = links or {}
    outside = UnsafeArchiveError(
        f"{archive.name}: symlink member {name!r} points outside the target folder "
        f"({target!r}); refusing to extract anything from this archive.")

    def follow(base: list[str], text: str, depth: int) -> list[str]:
        if depth > 40:
            raise UnsafeArchiveError(f"{archive.name}: symlink member {name!r} is part of a "
                                     f"symlink loop; refusing to extract anything from this archive.")
        t2 = text.replace("\\", "/")
        if t2.startswith("/") or _DRIVE.match(t2):
            raise outside
        parts = list(base)
        for comp in t2.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise outside
                parts.pop()
                continue
            parts.append(comp)
            linked = links.get("/".join(parts))
            if linked is not None:
                parts = follow(parts[:-1], linked, depth + 1)
        return parts

    follow(path.split("/")[:-1], t, 0)


def _open_archive(archive: Path):
    if zipfile.is_zipfile(archive):
        return "zip", zipfile.ZipFile(archive)
    try:
        return "tar", tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"{archive} is neither a readable zip nor tar archive ({e}); it may "
                           f"be corrupt: delete it and download it again.") from None


def list_members(archive: str | os.PathLike, strip_components: int = 0) -> list[Member]:
    """Validate every member of ``archive`` and return them (nothing is written).

    ``strip_components`` drops that many leading path components (like ``tar
    --strip-components``); members with fewer components (the top folder itself) are dropped.
    Raises :class:`UnsafeArchiveError` on the first unsafe member, naming it.
    """
    archive = Path(archive)
    kind, arc = _open_archive(archive)
    members: list[Member] = []
    try:
        raw_members = arc.infolist() if kind == "zip" else arc.getmembers()
        for info in raw_members:
            name = info.filename if kind == "zip" else info.name
            parts = _safe_parts(name, archive)
            if kind == "zip":
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    mkind, link = "symlink", arc.read(info).decode("utf-8", "replace")
                elif info.is_dir():
                    mkind, link = "dir", None
                else:
                    mkind, link = "file", None
                size, crc = info.file_size, info.CRC
            else:
                crc = None
                size = info.size
                if info.issym():
                    mkind, link = "symlink", info.linkname
                elif info.islnk():
                    try:
                        lparts = _safe_parts(info.linkname, archive)
                    except UnsafeArchiveError:
                        lparts = []
                    if len(lparts) <= strip_components:
                        raise UnsafeArchiveError(
                            f"{archive.name}: hardlink member {name!r} points outside the "
                            f"extracted folder ({info.linkname!r}); refusing to extract.")
                    mkind, link = "hardlink", "/".join(lparts[strip_components:])
                elif info.isdir():
                    mkind, link = "dir", None
                elif info.isfile():
                    mkind, link = "file", None
                else:
                    raise UnsafeArchiveError(
                        f"{archive.name}: member {name!r} is a device file or FIFO; refusing "
                        f"to extract anything from this archive.")
            if len(parts) <= strip_components:
                if mkind in ("dir",):
                    continue
                raise UnsafeArchiveError(
                    f"{archive.name}: member {name!r} lies above the folder level that is "
                    f"stripped ({strip_components}); refusing to extract.")
            path = "/".join(parts[strip_components:])
            members.append(Member(path, mkind, size, crc, link, info))
        links = {m.path: m.link for m in members if m.kind == "symlink"}
        for m in members:
            if m.kind == "symlink":
                _check_symlink(m.path, m.link, archive, m.raw.filename if kind == "zip" else m.raw.name,
                               links)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"{archive}: cannot read the member list ({e}); the archive may be "
                           f"corrupt: delete it and download it again.") from None
    finally:
        arc.close()
    return members


def archive_units(archive: str | os.PathLike, strip_components: int = 0) -> list[str]:
    """Sorted unit names (first path component, e.g. the PI-CAI patient ids) of ``archive``."""
    return sorted({m.unit for m in list_members(archive, strip_components)})


def uncompressed_size(archive: str | os.PathLike, strip_components: int = 0,
                      units: Iterable[str] | None = None) -> int:
    """Total bytes the selected units occupy once extracted."""
    keep = None if units is None else set(units)
    return sum(m.size for m in list_members(archive, strip_components)
               if m.kind == "file" and (keep is None or m.unit in keep))


def manifest_path(target: str | os.PathLike, archive: str | os.PathLike) -> Path:
    return Path(target) / MANIFEST_DIR / f"{Path(archive).name}.json"


def load_manifest(path: Path) -> dict:
    """The extraction manifest at ``path``; {} if it is missing or unreadable."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _unit_record(members: list[Member]) -> dict:
    return {m.path: [m.size, m.crc] for m in members if m.kind == "file"}


def files_present(target: Path, record: dict) -> bool:
    """True if every file of a unit record (``{path: [size, crc]}``) is in ``target`` with its
    recorded size."""
    for rel, (size, _crc) in record.items():
        p = target / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def _unit_present(target: Path, record: dict | None, expected: dict) -> bool:
    return record is not None and record == expected and files_present(target, record)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, *,
                 strip_components: int = 0,
                 select: Iterable[str] | Callable[[str], bool] | None = None,
                 progress: bool = True) -> ExtractReport:
    """Extract ``archive`` into ``target`` safely and idempotently (see the module docstring).

    ``select``: unit names (or a predicate on them) to extract; None = all. Every member is
    validated before the first byte is written, whatever ``select`` says.
    """
    from tqdm.auto import tqdm

    archive, target = Path(archive), Path(target)
    members = list_members(archive, strip_components)          # raises before any write
    by_unit: dict[str, list[Member]] = {}
    for m in members:
        if m.unit == MANIFEST_DIR:
            raise UnsafeArchiveError(f"{archive.name}: member {m.path!r} would overwrite the "
                                     f"extraction manifest folder {MANIFEST_DIR}/; refusing.")
        by_unit.setdefault(m.unit, []).append(m)
    if select is None:
        chosen = sorted(by_unit)
    elif callable(select):
        chosen = sorted(u for u in by_unit if select(u))
    else:
        wanted = set(select)
        chosen = sorted(u for u in by_unit if u in wanted)

    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob(".*.partial"):   # left by a run that was killed mid-unit
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    mpath = manifest_path(target, archive)
    manifest = load_manifest(mpath)
    if manifest.get("strip_components", strip_components) != strip_components:
        manifest = {}
    manifest.update({"archive": archive.name, "archive_size": archive.stat().st_size,
                     "strip_components": strip_components})
    units_rec = manifest.setdefault("units", {})
    report = ExtractReport(archive.name, target)

    todo = []
    for unit in chosen:
        expected = _unit_record(by_unit[unit])
        if _unit_present(target, units_rec.get(unit), expected):
            report.skipped.append(unit)
        else:
            todo.append(unit)
    if not todo:
        return report

    kind, arc = _open_archive(archive)
    try:
        for unit in tqdm(todo, desc=f"extract {archive.name}", unit="case", disable=not progress,
                         leave=False):
            tmp = Path(tempfile.mkdtemp(prefix=f".{unit}.", suffix=".partial", dir=target))
            try:
                n = _extract_unit(kind, arc, archive, by_unit[unit], tmp)
                final = target / unit
                _remove(final)   # an earlier partial or outdated copy: replaced as a whole
                os.replace(tmp / unit, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            units_rec[unit] = _unit_record(by_unit[unit])
            write_json_atomic(mpath, manifest)
            report.extracted.append(unit)
            report.n_files += n
    finally:
        arc.close()
    return report


def _extract_unit(kind: str, arc, archive: Path, members: list[Member], root: Path) -> int:
    n = 0
    for m in sorted(members, key=lambda m: (m.kind == "symlink", m.path)):
        out = root / m.path
        if m.kind == "dir":
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "symlink":
            try:
                os.symlink(m.link, out)
            except OSError as e:
                raise ArchiveError(f"{archive.name}: cannot create symlink member {m.path!r} "
                                   f"-> {m.link!r} ({e})") from None
            continue
        try:
            # tarfile.extractfile resolves a hardlink to its target's data: write a copy.
            src = arc.open(m.raw) if kind == "zip" else arc.extractfile(m.raw)
            if src is None:
                raise ArchiveError(f"{archive.name}: member {m.path!r} has no data")
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)   # zipfile checks the CRC-32 at the end
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, KeyError) as e:
            raise ArchiveError(f"{archive.name}: member {m.path!r} is corrupt ({e}); delete the "
                               f"archive and download it again.") from None
        n += 1
    return n
