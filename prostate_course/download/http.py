"""Robust HTTP download with the standard library: resume, retries, checksums, honest errors.

Why hand-written: the course may not add dependencies for this, and ``urllib.request`` has no
resume or retry; ``monai.apps.download_url`` has neither resume nor Range support either.

What :func:`download` guarantees:

- the file appears under its final name only after its size and md5 were checked
  (it is written to ``<name>.part`` and renamed);
- an interrupted transfer resumes with an HTTP ``Range: bytes=<n>-`` request and appends to
  the ``.part`` file; a server that ignores Range (answers 200) is detected and the transfer
  restarts from zero;
- transient errors (time-outs, dropped or reset connections, HTTP 408/429/5xx, a refused
  connection to a host that answered before) are retried with exponential back-off
  (``backoff * 2**attempt`` seconds, the attempt counter reset whenever bytes arrived);
- errors a retry cannot heal fail at once, with the same message: a name that does not
  resolve, a refused or unreachable connection to a host that has never answered in this
  process (offline, firewall, wrong mirror), and HTTP 4xx other than 408/429;
- nothing is written before the first byte of data arrives: the destination folder, the lock
  and the ``.part`` file are made only then, so an offline run leaves nothing behind;
- a checksum mismatch removes the file and raises :class:`ChecksumError`;
- errors raise :class:`DownloadError` with a message that says what happened and how to
  download the file by hand;
- two processes never write the same ``.part``: a ``<name>.lock`` holding the pid is taken
  (a lock whose process is gone is taken over);
- a file already downloaded and verified is not requested again (a small
  ``<name>.verified.json`` sidecar records its size, mtime and md5 so it is not re-hashed).
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..io_utils import file_digest, write_json_atomic

USER_AGENT = "prostate-course-downloader/1.0 (+urllib)"
#: HTTP client errors worth retrying (time-out, rate limit); every 5xx is retried too.
RETRY_CLIENT_STATUS = frozenset({408, 429})
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                   http.client.HTTPException)
#: ``host:port`` of every server that sent an HTTP answer (any status) in this process: a
#: refused connection to one of them is a restart or an overload, worth retrying.
_ANSWERED: set = set()
_UNREACHABLE_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


def retry_status(code: int) -> bool:
    """True for HTTP statuses a retry may heal: 408, 429 and every 5xx."""
    return code in RETRY_CLIENT_STATUS or 500 <= code <= 599


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


def is_permanent(err: BaseException, url: str) -> bool:
    """True if the network error ``err`` (raised for ``url``) cannot heal on a retry.

    A name that does not resolve (``socket.gaierror``: offline, or a typo), and a refused or
    unreachable connection to a host that never answered in this process. Everything else
    (time-outs, resets, cut transfers, a refusal from a host that answered before) is transient.
    """
    reason = getattr(err, "reason", err) if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, socket.gaierror):
        return True
    if isinstance(reason, OSError) and (isinstance(reason, ConnectionRefusedError)
                                        or reason.errno in _UNREACHABLE_ERRNOS):
        return _netloc(url) not in _ANSWERED
    return False


class DownloadError(RuntimeError):
    """A download failed; the message says why and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected checksum or size (file removed)."""


class InsufficientSpaceError(DownloadError):
    """Not enough free disk space for the download and its extraction."""


class _Incomplete(Exception):
    """The server closed the connection before sending everything it announced."""


def human_size(n: float | None) -> str:
    """``1536 -> '1.5 KiB'``; ``None -> 'unknown size'``."""
    if n is None:
        return "unknown size"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    return file_digest(path, "md5", chunk)


def part_path(dest: str | os.PathLike) -> Path:
    """``<dest>.part``: where :func:`download` writes (and resumes) before the rename."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def free_space(folder: str | os.PathLike) -> tuple[Path, int]:
    """``(probe, free bytes)`` of ``folder``'s disk; ``probe`` is ``folder`` or, if it does not
    exist yet, its nearest existing parent."""
    probe = Path(folder).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_disk_space(folder: str | os.PathLike, need_bytes: int, what: str = "the download") -> int:
    """Raise :class:`InsufficientSpaceError` unless ``folder``'s disk has ``need_bytes`` free.

    ``folder`` need not exist yet (its nearest existing parent is checked). Returns the free bytes.
    """
    _, free = free_space(folder)
    if need_bytes > free:
        raise InsufficientSpaceError(
            f"Not enough disk space for {what}: need about {human_size(need_bytes)} in {folder}, "
            f"but only {human_size(free)} is free on that disk. Free some space, or choose "
            f"another folder (set PROSTATE_COURSE_DATA or pass --dest / --downloads), or fetch "
            f"fewer folds (--folds 0)."
        )
    return free


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified.json")


def read_verified(dest: str | os.PathLike) -> dict | None:
    """The verification record of ``dest`` if it is still valid (same size and mtime), else None."""
    dest = Path(dest)
    side = _sidecar(dest)
    if not (dest.is_file() and side.is_file()):
        return None
    try:
        rec = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    st = dest.stat()
    if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    return rec


def record_verified(dest: str | os.PathLike, **extra) -> dict:
    """Write ``<dest>.verified.json`` (size, mtime, md5, plus ``extra``, e.g. sha256 or url)."""
    dest = Path(dest)
    st = dest.stat()
    rec = {"file": dest.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **extra}
    write_json_atomic(_sidecar(dest), rec)
    return rec


def forget_verified(dest: str | os.PathLike) -> None:
    _sidecar(Path(dest)).unlink(missing_ok=True)


def _verify_existing(dest: Path, md5: str | None, size: int | None, log) -> bool:
    """True if ``dest`` exists and matches; a mismatching file is removed (and reported)."""
    if not dest.is_file():
        return False
    rec = read_verified(dest)
    if rec is not None and (md5 is None or rec.get("md5") == md5) and (
            size is None or rec["size"] == size):
        return True
    actual_size = dest.stat().st_size
    if size is not None and actual_size != size:
        log(f"{dest} has {actual_size} bytes, expected {size}: removing it and downloading again.")
        dest.unlink()
        forget_verified(dest)
        return False
    digest = md5_file(dest) if md5 is not None else None
    if md5 is not None and digest != md5:
        log(f"{dest} has md5 {digest}, expected {md5}: corrupt or a different version; "
            f"removing it and downloading again.")
        dest.unlink()
        forget_verified(dest)
        return False
    record_verified(dest, md5=digest)
    return True


def _open(url: str, headers: dict, timeout: float):
    """``urlopen`` that remembers which hosts answered (see :func:`is_permanent`)."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http(s) URLs only)
    except urllib.error.HTTPError:
        _ANSWERED.add(_netloc(url))
        raise
    _ANSWERED.add(_netloc(url))
    if resp.url and _netloc(resp.url) != _netloc(url):  # followed a redirect
        _ANSWERED.add(_netloc(resp.url))
    return resp


def _http_error_message(url: str, code: int, reason: str, manual_hint: str) -> str:
    if code == 404:
        why = "the file is not there (HTTP 404 Not Found): the link may have moved"
    elif code in (401, 403):
        why = f"access was refused (HTTP {code} {reason})"
    elif code == 429:
        why = "the server is rate-limiting requests (HTTP 429 Too Many Requests); wait and retry"
    elif code >= 500:
        why = f"the server answered with an error (HTTP {code} {reason}); it may be down for a while"
    else:
        why = f"the server answered HTTP {code} {reason}"
    return f"Download of {url} failed: {why}.\n{manual_hint}".rstrip()


def _network_message(url: str, err: BaseException, manual_hint: str) -> str:
    reason = getattr(err, "reason", err)
    return (f"Could not download {url}: {reason!s}. Are you offline, behind a proxy or a "
            f"firewall? (urllib honours the https_proxy environment variable.) Check the "
            f"connection and rerun: finished files are kept and a partial file resumes.\n"
            f"{manual_hint}").rstrip()


def _sleep(backoff: float, attempt: int, log, why: str) -> None:
    delay = backoff * (2 ** attempt)
    log(f"{why}; retrying in {delay:.1f} s (attempt {attempt + 1})")
    time.sleep(delay)


def fetch_json(url: str, *, retries: int = 4, backoff: float = 1.0, timeout: float = 30.0,
               manual_hint: str = "", log=print) -> dict:
    """GET ``url`` and parse JSON, with the same retries and error messages as :func:`download`."""
    attempt = 0
    while True:
        try:
            with _open(url, {"Accept": "application/json"}, timeout) as resp:
                body = resp.read()
            try:
                return json.loads(body)
            except ValueError as e:
                raise DownloadError(f"{url} did not return JSON ({e}); first bytes: {body[:80]!r}")
        except urllib.error.HTTPError as e:
            if retry_status(e.code) and attempt < retries:
                _sleep(backoff, attempt, log, f"HTTP {e.code} from {url}")
                attempt += 1
                continue
            raise DownloadError(_http_error_message(url, e.code, e.reason, manual_hint)) from None
        except _NETWORK_ERRORS as e:
            if attempt < retries and not is_permanent(e, url):
                _sleep(backoff, attempt, log, f"{url}: {getattr(e, 'reason', e)}")
                attempt += 1
                continue
            raise DownloadError(_network_message(url, e, manual_hint)) from None


def _lock_owner(lock: Path) -> int:
    """The pid in ``lock`` if that process still runs (and is not us), else 0."""
    import psutil

    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
    return pid if pid and pid != os.getpid() and psutil.pid_exists(pid) else 0


def _busy_message(dest: Path, lock: Path, pid: int) -> str:
    return (f"{dest.name} is being downloaded by another process (pid {pid}); wait for it to "
            f"finish, or delete {lock} if that process is not a download.")


class _LazyLock:
    """``<dest>.lock`` (our pid), taken only when the first byte of data has arrived, so that a
    download that fails before (offline) writes nothing. A lock whose process is gone is taken
    over; one held by a live process raises :class:`DownloadError`."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.path = dest.with_name(dest.name + ".lock")
        self.held = False

    def check(self) -> None:
        """Refuse at once (before any request) when a live process holds the lock."""
        pid = _lock_owner(self.path) if self.path.exists() else 0
        if pid:
            raise DownloadError(_busy_message(self.dest, self.path, pid))

    def acquire(self) -> bool:
        """Take the lock (making the folder if needed); True the first time."""
        if self.held:
            return False
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = _lock_owner(self.path)
                if pid:
                    raise DownloadError(_busy_message(self.dest, self.path, pid)) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return True
        raise DownloadError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None,
             size: int | None = None, retries: int = 5, backoff: float = 1.0,
             timeout: float = 60.0, chunk_size: int = 1 << 20, progress: bool = True,
             manual_hint: str = "", log=print) -> Path:
    """Download ``url`` to ``dest``; resume, retry, verify ``size`` and ``md5``; return ``dest``.

    An existing ``dest`` that matches (size/md5, or just exists when neither is given) is
    returned without any request. See the module docstring for the guarantees.
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    if _verify_existing(dest, md5, size, log):
        return dest
    lock = _LazyLock(dest)
    lock.check()
    try:
        return _download(url, dest, md5, size, retries, backoff, timeout, chunk_size, progress,
                         manual_hint, log, lock)
    finally:
        lock.release()


def _download(url, dest: Path, md5, size, retries, backoff, timeout, chunk_size, progress,
              manual_hint, log, lock: _LazyLock) -> Path:
    from tqdm.auto import tqdm

    part = part_path(dest)
    attempt = 0
    t0, start_bytes = time.monotonic(), (part.stat().st_size if part.exists() else 0)
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            log(f"{part} is larger than the expected {size} bytes: starting again.")
            lock.acquire()
            part.unlink()
            offset = 0
        if size is not None and offset == size and size > 0:
            break  # a previous run got every byte; only verification is left
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        asked, received = offset, 0
        try:
            with _open(url, headers, timeout) as resp:
                status = resp.status
                if offset and status == 206:
                    crange = resp.headers.get("Content-Range", "")
                    if not crange.startswith(f"bytes {offset}-"):
                        log(f"unexpected Content-Range {crange!r} from {url}: starting again.")
                        lock.acquire()
                        part.unlink(missing_ok=True)
                        continue
                elif offset:
                    log(f"The server ignored the resume request (HTTP {status}): downloading "
                        f"{dest.name} from the start.")
                    offset = 0
                length = resp.headers.get("Content-Length")
                expected_total = offset + int(length) if length is not None else size
                block = resp.read(chunk_size)  # the first byte of data: only now write anything
                if lock.acquire():
                    if _verify_existing(dest, md5, size, log):  # finished meanwhile elsewhere
                        return dest
                    now = part.stat().st_size if part.exists() else 0
                    if now != asked:  # another process wrote meanwhile: ask again from `now`
                        continue
                with open(part, "ab" if offset else "wb") as f, tqdm(
                        total=expected_total, initial=offset, unit="B", unit_scale=True,
                        unit_divisor=1024, desc=dest.name, disable=not progress) as bar:
                    while block:
                        f.write(block)
                        received += len(block)
                        bar.update(len(block))
                        block = resp.read(chunk_size)
                if expected_total is not None and offset + received < expected_total:
                    raise _Incomplete(f"connection closed after {offset + received} of "
                                      f"{expected_total} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:
                # Range not satisfiable: the .part is complete or stale. Verify or restart.
                if size is None or offset == size:
                    break
                lock.acquire()
                part.unlink(missing_ok=True)
                continue
            if retry_status(e.code) and attempt < retries:
                _sleep(backoff, attempt, log, f"HTTP {e.code} for {dest.name}")
                attempt += 1
                continue
            raise DownloadError(_http_error_message(url, e.code, e.reason, manual_hint)) from None
        except (_Incomplete, *_NETWORK_ERRORS) as e:
            if received:
                attempt = 0  # progress was made: a flaky line, not a dead host
            if attempt < retries and not is_permanent(e, url):
                _sleep(backoff, attempt, log,
                       f"{dest.name}: {getattr(e, 'reason', e)} (will resume)")
                attempt += 1
                continue
            raise DownloadError(_network_message(url, e, manual_hint)) from None

    lock.acquire()  # (a no-op when already held) a resumed, complete .part is ours to finish
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise ChecksumError(
            f"{dest.name}: received {got} bytes but the record says {size}; the incomplete "
            f"file was removed. Rerun to download it again.\n{manual_hint}".rstrip())
    digest = md5_file(part)
    if md5 is not None and digest != md5:
        part.unlink()
        raise ChecksumError(
            f"{dest.name}: md5 {digest} does not match the expected {md5} (from the record's "
            f"metadata); the corrupt file was removed and will not be used. Rerun to download "
            f"it again; if it keeps failing, download it by hand.\n{manual_hint}".rstrip())
    os.replace(part, dest)
    record_verified(dest, md5=digest, url=url)
    secs = max(time.monotonic() - t0, 1e-6)
    log(f"{dest.name}: {human_size(got)} downloaded ({human_size((got - start_bytes) / secs)}/s)"
        f"{' and md5 verified' if md5 else ''} -> {dest}")
    return dest
