"""prostate_course.download against a local HTTP server on 127.0.0.1 (no real host is touched).

The server (http.server in a thread) serves bytes with Range support and can inject failures:
cut the first response mid-way, ignore Range, answer 404/500 (always or N times), serve JSON.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prostate_course.download import archive as arc
from prostate_course.download import http as dl
from prostate_course.download import picai, sources

REPO = Path(__file__).resolve().parents[1]
COMMIT = sources.LABELS_COMMIT


# --------------------------------------------------------------------------- local server
class FakeHost:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.json: dict[str, object] = {}
        self.status: dict[str, int] = {}            # path -> HTTP error, every time
        self.fail_n: dict[str, list] = {}           # path -> [code, times left]
        self.cut_once: set[str] = set()             # send half the body, then close
        self.ignore_range: set[str] = set()
        self.no_length: set[str] = set()            # no Content-Length (body ends at close)
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                host.log.append((path, self.headers.get("Range")))
                if path in host.status:
                    return self.send_error(host.status[path])
                if path in host.fail_n and host.fail_n[path][1] > 0:
                    host.fail_n[path][1] -= 1
                    return self.send_error(host.fail_n[path][0])
                if path in host.json:
                    body = json.dumps(host.json[path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if path not in host.files:
                    return self.send_error(404)
                data = host.files[path]
                start = 0
                rng = self.headers.get("Range")
                if rng and path not in host.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self.send_error(416)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if path not in host.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in host.cut_once:
                    host.cut_once.discard(path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def requests(self, path: str) -> int:
        return sum(1 for p, _ in self.log if p == path)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host():
    h = FakeHost()
    yield h
    h.close()


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


FAST = dict(backoff=0.01, progress=False, log=lambda *a: None)
PAYLOAD = bytes(range(256)) * 400  # 100 KiB


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# ------------------------------------------------------------------------------- download
def test_interrupted_download_resumes_and_verifies(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    host.cut_once.add("/f.bin")
    dest = tmp_path / "f.bin"
    out = dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), size=len(PAYLOAD),
                      chunk_size=4096, **FAST)
    assert out.read_bytes() == PAYLOAD
    assert [r for _, r in host.log] == [None, f"bytes={len(PAYLOAD) // 2}-"]  # resumed mid-file
    assert not (tmp_path / "f.bin.part").exists()
    assert dl.read_verified(dest)["md5"] == md5(PAYLOAD)


def test_cut_without_content_length_resumes_using_record_size(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    host.cut_once.add("/f.bin")
    host.no_length.add("/f.bin")
    out = dl.download(host.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD),
                      size=len(PAYLOAD), **FAST)
    assert out.read_bytes() == PAYLOAD and host.requests("/f.bin") == 2


def test_server_ignoring_range_restarts_from_zero(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    host.cut_once.add("/f.bin")
    host.ignore_range.add("/f.bin")
    msgs = []
    out = dl.download(host.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD),
                      backoff=0.01, progress=False, log=msgs.append)
    assert out.read_bytes() == PAYLOAD  # not the first half twice
    assert any("ignored the resume request" in m for m in msgs)


def test_second_run_downloads_nothing(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), size=len(PAYLOAD), **FAST)
    dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), size=len(PAYLOAD), **FAST)
    assert host.requests("/f.bin") == 1


def test_concurrent_download_refused_and_stale_lock_taken_over(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    lock = tmp_path / "f.bin.lock"
    lock.write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(dl.DownloadError, match="another process"):
        dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), **FAST)
    assert host.requests("/f.bin") == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))     # its process is gone: stale
    assert dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), **FAST).read_bytes() == PAYLOAD
    assert not lock.exists()


def test_checksum_mismatch_removes_file_and_says_so(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD[:-1] + b"X"  # wrong content
    dest = tmp_path / "f.bin"
    with pytest.raises(dl.ChecksumError) as e:
        dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), manual_hint="HINT-BY-HAND",
                    **FAST)
    msg = str(e.value)
    assert md5(PAYLOAD) in msg and "removed" in msg and "HINT-BY-HAND" in msg
    assert list(tmp_path.iterdir()) == []  # neither f.bin nor f.bin.part is left


def test_corrupt_existing_file_is_replaced(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"garbage from an earlier attempt")
    msgs = []
    dl.download(host.url("/f.bin"), dest, md5=md5(PAYLOAD), backoff=0.01, progress=False,
                log=msgs.append)
    assert dest.read_bytes() == PAYLOAD
    assert any("removing it" in m for m in msgs)


def test_404_is_clear_and_not_retried(host, tmp_path):
    with pytest.raises(dl.DownloadError) as e:
        dl.download(host.url("/missing.zip"), tmp_path / "m.zip", retries=3,
                    manual_hint="To download by hand: ...", **FAST)
    assert "404" in str(e.value) and "by hand" in str(e.value)
    assert host.requests("/missing.zip") == 1


def test_500_retried_then_clear_message(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    host.status["/f.bin"] = 500
    with pytest.raises(dl.DownloadError) as e:
        dl.download(host.url("/f.bin"), tmp_path / "f.bin", retries=2, **FAST)
    assert "HTTP 500" in str(e.value)
    assert host.requests("/f.bin") == 3  # 1 + 2 retries
    assert not (tmp_path / "f.bin").exists()


def test_transient_503_then_success(host, tmp_path):
    host.files["/f.bin"] = PAYLOAD
    host.fail_n["/f.bin"] = [503, 2]
    out = dl.download(host.url("/f.bin"), tmp_path / "f.bin", md5=md5(PAYLOAD), retries=3, **FAST)
    assert out.read_bytes() == PAYLOAD and host.requests("/f.bin") == 3


def test_connection_refused_is_clear(tmp_path):
    with pytest.raises(dl.DownloadError) as e:
        dl.download(refused_url() + "/f.bin", tmp_path / "f.bin", retries=1,
                    manual_hint="To download by hand: X", **FAST)
    assert "offline" in str(e.value) and "by hand" in str(e.value)
    assert not (tmp_path / "f.bin").exists()


# --------------------------------------------------------------- offline: fail fast
UNRESOLVABLE = "picai-mirror.invalid"


@pytest.fixture
def no_dns(monkeypatch):
    """A resolver that knows no ``UNRESOLVABLE`` (as offline), so no test depends on real DNS."""
    real = socket.getaddrinfo

    def fake(host, *a, **k):
        if host == UNRESOLVABLE:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return f"http://{UNRESOLVABLE}"


@pytest.mark.parametrize("where", ["closed port", "name that does not resolve"])
def test_unreachable_host_fails_at_once_and_writes_nothing(tmp_path, no_dns, where):
    """With the default 5 retries and 2 s back-off a retried failure would take 62 s."""
    base = refused_url() if where == "closed port" else no_dns
    msgs = []
    t0 = time.monotonic()
    with pytest.raises(dl.DownloadError) as e:
        dl.download(base + "/f.bin", tmp_path / "dl" / "f.bin", retries=5, backoff=2.0,
                    progress=False, manual_hint="To download by hand: X", log=msgs.append)
    assert time.monotonic() - t0 < 5.0
    assert "offline" in str(e.value) and "by hand" in str(e.value) and not msgs  # no retry
    if where != "closed port":
        assert "Name or service not known" in str(e.value)
    assert not (tmp_path / "dl").exists()  # not even the folder or a lock
    with pytest.raises(dl.DownloadError, match="offline"):
        dl.fetch_json(base + "/api", retries=4, backoff=2.0, log=msgs.append)
    assert not msgs


def test_refused_by_a_host_that_answered_before_is_retried(tmp_path):
    h = FakeHost()
    h.files["/a.bin"] = PAYLOAD
    base = h.base
    dl.download(base + "/a.bin", tmp_path / "a.bin", **FAST)
    h.close()  # the server went away (a restart): its port now refuses
    msgs = []
    with pytest.raises(dl.DownloadError, match="offline"):
        dl.download(base + "/b.bin", tmp_path / "b.bin", retries=2, backoff=0.01, progress=False,
                    log=msgs.append)
    assert sum("retrying" in m for m in msgs) == 2


def test_timeout_is_retried(tmp_path):
    """A server that accepts the connection and then says nothing: a time-out, retried."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    msgs = []
    try:
        with pytest.raises(dl.DownloadError):
            dl.download(f"http://127.0.0.1:{srv.getsockname()[1]}/f.bin", tmp_path / "f.bin",
                        retries=2, backoff=0.01, timeout=0.3, progress=False, log=msgs.append)
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
    assert sum("retrying" in m for m in msgs) == 2 and len(held) == 3


@pytest.mark.parametrize("code, retried", [(403, False), (410, False), (408, True), (429, True),
                                           (502, True)])
def test_client_errors_fail_at_once_408_429_5xx_retried(host, tmp_path, code, retried):
    host.files["/f.bin"] = PAYLOAD
    host.status["/f.bin"] = code
    with pytest.raises(dl.DownloadError, match=f"HTTP {code}"):
        dl.download(host.url("/f.bin"), tmp_path / "dl" / "f.bin", retries=2, **FAST)
    assert host.requests("/f.bin") == (3 if retried else 1)
    assert not (tmp_path / "dl").exists()


def test_offline_script_exits_fast_and_leaves_nothing(tmp_path):
    """`data_download/picai.py --folds 0` against a host that cannot be reached (a closed port on
    loopback; the real script, default retries): non-zero in < 5 s, the message, nothing written."""
    env = dict(os.environ, PROSTATE_COURSE_DATA=str(tmp_path / "data"),
               **{sources.ZENODO_ENV: refused_url(), sources.LABELS_ENV: refused_url()})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(REPO / "data_download" / "picai.py"), "--folds", "0"],
                       env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0 and elapsed < 5.0, (elapsed, r.stderr)
    assert "Could not download" in r.stderr and "offline" in r.stderr and "by hand" in r.stderr
    assert "retrying" not in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []  # no data root, no licence notice, no lock


@pytest.mark.parametrize("main", ["images", "labels"])
def test_offline_commands_leave_nothing_with_an_unresolvable_name(tmp_path, monkeypatch, no_dns,
                                                                  capsys, main):
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv(sources.ZENODO_ENV, no_dns)
    monkeypatch.setenv(sources.LABELS_ENV, no_dns)
    t0 = time.monotonic()
    rc = (picai.images_main if main == "images" else picai.labels_main)(["--quiet"])
    assert rc == 1 and time.monotonic() - t0 < 5.0
    err = capsys.readouterr().err
    assert "Name or service not known" in err and "offline" in err
    assert list(tmp_path.iterdir()) == []


def test_disk_space_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=10))
    with pytest.raises(dl.InsufficientSpaceError, match="Not enough disk space"):
        dl.check_disk_space(tmp_path / "not" / "yet", 10**9, "the test")


# ------------------------------------------------------------------------------- archives
def make_zip(path: Path, members: dict[str, bytes], stored=False) -> Path:
    comp = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", comp) as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name), data, compress_type=comp)
    return path


def make_tar(path: Path, members: list[tuple[str, str, object]]) -> Path:
    """members: (name, kind in file|dir|sym|hard, data-or-linkname)."""
    with tarfile.open(path, "w:gz") as t:
        for name, kind, x in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = len(x)
                t.addfile(ti, io.BytesIO(x))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                       "hard": tarfile.LNKTYPE}[kind]
            if kind in ("sym", "hard"):
                ti.linkname = x
            t.addfile(ti)
    return path


@pytest.mark.parametrize("bad", ["../escaped.txt", "10000/../../escaped.txt", "/tmp/abs_evil.txt",
                                 "..\\escaped.txt", "C:/evil.txt"])
def test_zip_slip_refused_before_writing(tmp_path, bad):
    z = make_zip(tmp_path / "a.zip", {"10000/ok.mha": b"ok", bad: b"evil"})
    target = tmp_path / "sub" / "images"
    with pytest.raises(arc.UnsafeArchiveError) as e:
        arc.safe_extract(z, target, progress=False)
    assert repr(bad) in str(e.value)
    assert not target.exists()          # nothing written, not even the safe member
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "sub" / "escaped.txt").exists()


@pytest.mark.parametrize("members", [
    [("top/a", "file", b"x"), ("top/link", "sym", "../../outside")],
    [("top/a", "file", b"x"), ("top/link", "sym", "/etc/passwd")],
    [("top/a", "file", b"x"), ("top/hard", "hard", "../outside")],
    [("top/a", "file", b"x"), ("../top/b", "file", b"y")],
    [("top/a", "file", b"x"), ("/abs/b", "file", b"y")],
    # each link stays inside on its own, but "up/.." follows top/up (the root) and then climbs out
    [("top/up", "sym", ".."), ("top/x", "sym", "up/..")],
])
def test_tar_unsafe_members_refused(tmp_path, members):
    t = make_tar(tmp_path / "a.tar.gz", members)
    target = tmp_path / "out"
    with pytest.raises(arc.UnsafeArchiveError) as e:
        arc.safe_extract(t, target, progress=False)
    assert repr(members[1][0]) in str(e.value)
    assert not target.exists()


def test_tar_internal_links_ok_and_strip(tmp_path):
    t = make_tar(tmp_path / "a.tar.gz", [
        ("root-abc", "dir", None), ("root-abc/d", "dir", None), ("root-abc/d/f.txt", "file", b"hi"),
        ("root-abc/d/alias", "sym", "f.txt"), ("root-abc/d/copy", "hard", "root-abc/d/f.txt")])
    arc.safe_extract(t, tmp_path / "out", strip_components=1, progress=False)
    d = tmp_path / "out" / "d"
    assert (d / "f.txt").read_bytes() == b"hi" and (d / "alias").is_symlink()
    assert (d / "alias").read_bytes() == b"hi" and (d / "copy").read_bytes() == b"hi"


def test_extraction_idempotent_and_repairs(tmp_path):
    z = make_zip(tmp_path / "a.zip", {f"{p}/{p}_1_t2w.mha": bytes([p % 256]) * 50
                                      for p in (10001, 10002, 10003)})
    target = tmp_path / "images"
    r1 = arc.safe_extract(z, target, progress=False)
    assert r1.extracted == ["10001", "10002", "10003"] and r1.n_files == 3
    r2 = arc.safe_extract(z, target, progress=False)
    assert r2.extracted == [] and r2.skipped == ["10001", "10002", "10003"]
    (target / "10002" / "10002_1_t2w.mha").write_bytes(b"truncated")   # damaged since
    (target / ".10003.x1y2.partial" / "10003").mkdir(parents=True)      # a killed run's leftover
    r3 = arc.safe_extract(z, target, progress=False)
    assert r3.extracted == ["10002"]
    assert (target / "10002" / "10002_1_t2w.mha").read_bytes() == bytes([10002 % 256]) * 50
    assert not [p for p in target.iterdir() if p.name.endswith(".partial")]
    assert sorted(p.name for p in target.iterdir()) == [".extracted", "10001", "10002", "10003"]


def test_corrupt_member_reported_by_name(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"10001/x.mha": b"A" * 1000}, stored=True)
    raw = bytearray(z.read_bytes())
    i = raw.find(b"A" * 1000)
    raw[i + 500] = ord("B")
    z.write_bytes(bytes(raw))
    with pytest.raises(arc.ArchiveError, match="10001/x.mha"):
        arc.safe_extract(z, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "10001").exists()  # the partial unit never appears


# ------------------------------------------------------------------------ PI-CAI end to end
CASES = {10001: 1000001, 10002: 1000002, 10003: 1000003}


def fold_zip_bytes(tmp_path: Path) -> bytes:
    members = {f"{p}/{p}_{s}_{q}.mha": f"{p}{q}".encode() * 100
               for p, s in CASES.items() for q in ("t2w", "adc", "hbv", "sag", "cor")}
    return make_zip(tmp_path / "src_fold0.zip", members).read_bytes()


def labels_tar_bytes(tmp_path: Path, top: str = f"picai_labels-{COMMIT}") -> bytes:
    members = [(top, "dir", None), (f"{top}/README.md", "file", b"labels"),
               (f"{top}/clinical_information/marksheet.csv", "file", b"patient_id,study_id\n")]
    members += [(f"{top}/csPCa_lesion_delineations/human_expert/resampled/{p}_{s}.nii.gz", "file",
                 b"nii") for p, s in CASES.items()]
    return make_tar(tmp_path / "src_labels.tar.gz", members).read_bytes()


@pytest.fixture
def picai_host(host, tmp_path, monkeypatch):
    fold = fold_zip_bytes(tmp_path)
    host.files["/files/picai_public_images_fold0.zip"] = fold
    host.json[f"/api/records/{sources.ZENODO_RECORD}"] = {"files": [{
        "key": "picai_public_images_fold0.zip", "size": len(fold), "checksum": f"md5:{md5(fold)}",
        "links": {"self": host.url("/files/picai_public_images_fold0.zip")}}]}
    host.files[f"/DIAGNijmegen/picai_labels/tar.gz/{COMMIT}"] = labels_tar_bytes(tmp_path)
    monkeypatch.setenv(sources.ZENODO_ENV, host.base)
    monkeypatch.setenv(sources.LABELS_ENV, host.base)
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "data"))
    return host


def args(tmp_path, *extra):
    return ["--dest", str(tmp_path / "raw"), "--downloads", str(tmp_path / "dl"),
            "--backoff", "0.01", "--retries", "2", "--quiet", *extra]


def test_picai_script_end_to_end_and_second_run(picai_host, tmp_path, capsys):
    fold_path = "/files/picai_public_images_fold0.zip"
    labels_path = f"/DIAGNijmegen/picai_labels/tar.gz/{COMMIT}"
    picai_host.cut_once.add(fold_path)  # the big archive gets interrupted once
    assert picai.images_main(args(tmp_path, "--folds", "0", "--max-cases", "2")) == 0
    raw = tmp_path / "raw"
    assert sorted(p.name for p in (raw / "images").iterdir() if not p.name.startswith(".")) == \
        ["10001", "10002"]
    assert (raw / "images" / "10001" / "10001_1000001_t2w.mha").is_file()
    assert (raw / "labels" / "clinical_information" / "marksheet.csv").is_file()
    assert (raw / "labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled" /
            "10003_1000003.nii.gz").is_file()
    notice = (raw / "LICENSE_NOTICE.md").read_text()
    assert "CC BY-NC 4.0" in notice and "Lancet Oncology" in notice and "6624726" in notice
    manifest = json.loads((tmp_path / "dl" / "MANIFEST.json").read_text())
    assert len(manifest[sources.labels_name()]["sha256"]) == 64
    assert manifest["picai_public_images_fold0.zip"]["md5"] == md5(
        picai_host.files[fold_path])
    out = capsys.readouterr().out
    assert "CC BY-NC 4.0" in out
    assert picai_host.requests(fold_path) == 2 and picai_host.requests(labels_path) == 1

    # second run: nothing is downloaded again (only the record's metadata is read)
    assert picai.images_main(args(tmp_path, "--folds", "0", "--max-cases", "2")) == 0
    assert picai_host.requests(fold_path) == 2 and picai_host.requests(labels_path) == 1
    assert "0 case(s) extracted, 2 already present" in capsys.readouterr().out

    # all cases, then delete the archive: a later run makes no request at all
    n_before = len(picai_host.log)
    assert picai.images_main(args(tmp_path, "--folds", "0", "--delete-archives")) == 0
    assert (raw / "images" / "10003").is_dir()
    assert not (tmp_path / "dl" / "picai_public_images_fold0.zip").exists()
    assert picai_host.requests(fold_path) == 2
    n_before = len(picai_host.log)
    assert picai.images_main(args(tmp_path, "--folds", "0", "--no-labels")) == 0
    assert len(picai_host.log) == n_before


def test_max_cases_skips_folds_not_needed(picai_host, tmp_path):
    rec = picai_host.json[f"/api/records/{sources.ZENODO_RECORD}"]
    fold1 = make_zip(tmp_path / "f1.zip", {"11000/11000_1100000_t2w.mha": b"x"}).read_bytes()
    picai_host.files["/files/picai_public_images_fold1.zip"] = fold1
    rec["files"].append({"key": "picai_public_images_fold1.zip", "size": len(fold1),
                         "checksum": f"md5:{md5(fold1)}",
                         "links": {"self": picai_host.url("/files/picai_public_images_fold1.zip")}})
    assert picai.images_main(args(tmp_path, "--folds", "0", "1", "--max-cases", "3",
                                  "--no-labels")) == 0
    assert picai_host.requests("/files/picai_public_images_fold1.zip") == 0
    assert picai.images_main(args(tmp_path, "--folds", "0", "1", "--no-labels")) == 0
    assert (tmp_path / "raw" / "images" / "11000" / "11000_1100000_t2w.mha").is_file()


def test_picai_checksum_mismatch_from_record(picai_host, tmp_path, capsys):
    rec = picai_host.json[f"/api/records/{sources.ZENODO_RECORD}"]
    rec["files"][0]["checksum"] = "md5:" + "0" * 32
    assert picai.images_main(args(tmp_path, "--no-labels")) == 1
    err = capsys.readouterr().err
    assert "does not match" in err and "0" * 32 in err
    assert not list((tmp_path / "dl").glob("picai_public_images_fold0.zip*"))
    assert not (tmp_path / "raw" / "images" / "10001").exists()


def test_picai_404_message_says_where_to_put_files(picai_host, tmp_path, capsys):
    picai_host.status["/files/picai_public_images_fold0.zip"] = 404
    assert picai.images_main(args(tmp_path, "--no-labels")) == 1
    err = capsys.readouterr().err
    assert "404" in err and "by hand" in err and str(tmp_path / "dl") in err


def test_picai_disk_space_checked_before_downloading(picai_host, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: types.SimpleNamespace(free=1000))
    assert picai.images_main(args(tmp_path, "--no-labels")) == 1
    assert "Not enough disk space" in capsys.readouterr().err
    assert picai_host.requests("/files/picai_public_images_fold0.zip") == 0


def test_labels_archive_of_wrong_commit_refused(picai_host, tmp_path):
    picai_host.files[f"/DIAGNijmegen/picai_labels/tar.gz/{COMMIT}"] = labels_tar_bytes(
        tmp_path, top="picai_labels-main")
    with pytest.raises(dl.ChecksumError, match="not the picai_labels archive of commit"):
        picai.fetch_labels(raw_dir=tmp_path / "raw", downloads=tmp_path / "dl", **FAST)
    assert not (tmp_path / "dl" / sources.labels_name()).exists()
    assert not (tmp_path / "raw" / "labels" / "clinical_information").exists()


def test_dry_run_online_exact_and_offline_approximate(picai_host, tmp_path, monkeypatch):
    text = picai.dry_run([0], downloads=tmp_path / "dl", raw_dir=tmp_path / "raw", max_cases=5,
                         log=lambda *a: None)
    fold = picai_host.files["/files/picai_public_images_fold0.zip"]
    assert md5(fold) in text and dl.human_size(len(fold)) in text and "APPROXIMATE" not in text
    assert "whole fold archives are still downloaded" in text
    assert picai_host.requests("/files/picai_public_images_fold0.zip") == 0
    monkeypatch.setenv(sources.ZENODO_ENV, refused_url())
    text = picai.dry_run([0, 1], downloads=tmp_path / "dl", backoff=0.01, log=lambda *a: None)
    assert "Offline" in text and "APPROXIMATE" in text and "fold1.zip" in text


def test_prepare_flag_prepares_where_ensure_dataset_looks(picai_host, tmp_path, monkeypatch,
                                                         capsys):
    from prostate_course.data import dataset as dsmod

    calls = []

    def fake_prepare(raw_images, labels, out, **kw):  # the real one is tested by the data code
        calls.append((Path(raw_images), Path(labels), Path(out), kw))
        out = Path(out)
        out.mkdir(parents=True)
        (out / "cases.csv").write_text("case_id,patient_id,study_id,split\n")
        (out / "cache.pt").write_bytes(b"")
        (out / "manifest.json").write_text(json.dumps(kw.get("extra_manifest") or {}))

    monkeypatch.setattr(dsmod, "prepare_dataset", fake_prepare)
    root = tmp_path / "data"          # PROSTATE_COURSE_DATA (set by picai_host)
    argv = ["--backoff", "0.01", "--quiet", "--max-cases", "2", "--prepare"]
    assert picai.images_main(argv) == 0
    raw_images, labels, out, kw = calls[0]
    assert raw_images == root / "raw" / "picai" / "images" and labels == root / "raw" / "picai" / "labels"
    from prostate_course.profile import load_profile

    gpu = load_profile("gpu").data          # the gpu profile's geometry, whatever it is tuned to
    assert kw["max_cases"] == 2 and tuple(kw["spacing"]) == tuple(gpu["spacing"])
    assert tuple(kw["crop"]) == tuple(gpu["crop"])
    assert out.parent == root / "prepared" and out.name.startswith("picai-")
    assert "--set data.source=picai --set data.n_cases=2" in capsys.readouterr().out
    # what a notebook does later with the same settings finds it: no second prepare
    ds = dsmod.ensure_dataset(picai.picai_profile("gpu", 2))
    assert ds.root == out and len(calls) == 1


def test_folds_default_to_the_profiles_download_folds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(sources.ZENODO_ENV, refused_url())  # offline dry run: approximate sizes
    monkeypatch.setenv("PROSTATE_COURSE_DATA", str(tmp_path / "data"))
    assert picai.images_main(["--dry-run", "--no-labels"]) == 0  # gpu: [0]
    out = capsys.readouterr().out
    assert "fold0.zip" in out and "fold1.zip" not in out
    assert picai.images_main(["--dry-run", "--no-labels", "--profile", "full"]) == 0
    out = capsys.readouterr().out
    assert all(f"fold{k}.zip" in out for k in range(5))
    assert picai.images_main(["--dry-run", "--no-labels", "--profile", "full", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "fold3.zip" in out and "fold0.zip" not in out
    assert not (tmp_path / "data").exists()


def test_bad_fold_rejected():
    with pytest.raises(SystemExit):
        picai.images_main(["--folds", "7", "--dry-run"])


@pytest.mark.parametrize("script", ["picai.py", "picai_labels.py"])
def test_scripts_help(script):
    r = subprocess.run([sys.executable, str(REPO / "data_download" / script), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--dry-run" in r.stdout and "--dest" in r.stdout
    if script == "picai.py":
        assert "whole fold archive" in " ".join(r.stdout.split())
