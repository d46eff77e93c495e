"""AutoVI download against a local HTTP server that mimics the Zenodo record API.

The server (127.0.0.1, port 0, one thread per request) serves ``/api/records/<id>`` and
``/files/<name>``, honours ``Range: bytes=N-`` and can be told to ignore Range, serve wrong
bytes or close the connection early.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedpatchcore.core.data.download import (
    AUTOVI_RECORD_ID,
    PARTIAL_DIR_NAME,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    check_autovi_layout,
    download_autovi,
    format_layout_table,
    parse_record_files,
    safe_extract_category,
)

FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5, "chunk_size": 4096, "progress": False}


# ---------------------------------------------------------------------------------------------
# test data: a tiny AutoVI-layout zip
# ---------------------------------------------------------------------------------------------


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def autovi_zip(category: str = "engine_wiring", extra: dict[str, bytes] | None = None) -> bytes:
    """A zip laid out like the real ones: <category>/train/good, test/<defect>, ground_truth/<defect>/<id>/."""
    members = {
        f"{category}/defects_config.json": b'[{"defect_name": "fastening", "pixel_value": 255}]',
        f"{category}/train/good/0000.png": _png(0),
        f"{category}/train/good/0001.png": _png(1),
        f"{category}/train/good/0002.png": _png(2),
        f"{category}/test/good/0000.png": _png(3),
        f"{category}/test/fastening/0000.png": _png(4),
        f"{category}/test/fastening/0001.png": _png(5),
        f"{category}/ground_truth/fastening/0000/0000.png": _png(6, 8),
        f"{category}/ground_truth/fastening/0001/0000.png": _png(7, 8),
    }
    members.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{category}/", b"")
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# the local server
# ---------------------------------------------------------------------------------------------


class FakeZenodo:
    """State shared with the handler: what to serve and how to misbehave."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # what the record API announces (size, md5)
        self.served: dict[str, bytes] = {}  # bytes actually sent, when different (corruption)
        self.ignore_range = False
        self.truncate: dict[str, str] = {}  # name -> "first" | "always"
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.file_gets: dict[str, int] = {}
        self.lock = threading.Lock()
        self.base = ""

    def record(self) -> dict:
        return {
            "id": int(AUTOVI_RECORD_ID),
            "metadata": {"title": "AutoVI", "license": {"id": "cc-by-nc-sa-4.0"}},
            "files": [
                {
                    "id": f"id-{name}",
                    "key": name,
                    "size": len(data),
                    "checksum": "md5:" + hashlib.md5(data).hexdigest(),
                    "links": {"self": f"{self.base}/files/{name}"},
                }
                for name, data in self.files.items()
            ],
        }


def _handler(state: FakeZenodo):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(
            self, code: int, body: bytes, headers: dict[str, str] | None = None, cut: int | None = None
        ):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
            if cut is not None:  # close early: the client gets fewer bytes than announced
                self.close_connection = True

        def do_GET(self):
            rng = self.headers.get("Range")
            with state.lock:
                state.requests.append((self.path, rng))
            if self.path == f"/api/records/{AUTOVI_RECORD_ID}":
                self._send(200, json.dumps(state.record()).encode(), {"Content-Type": "application/json"})
                return
            if not self.path.startswith("/files/"):
                self._send(404, b"not found")
                return
            name = self.path[len("/files/") :]
            if name not in state.files:
                self._send(404, b"not found")
                return
            with state.lock:
                n_get = state.file_gets[name] = state.file_gets.get(name, 0) + 1
            data = state.served.get(name, state.files[name])
            start = 0
            if rng and not state.ignore_range and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
            body = data[start:]
            code = 206 if start else 200
            headers = {"Content-Type": "application/zip", "Accept-Ranges": "bytes"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            cut = None
            mode = state.truncate.get(name)
            half = len(data) // 2
            if mode == "first" and n_get == 1:
                cut = half - start
            elif mode == "always":
                cut = max(0, half - start)  # never gets past the middle of the file
            self._send(code, body, headers, cut)

    return Handler


@pytest.fixture()
def zenodo(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    state = FakeZenodo()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    """A port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(target: Path) -> list[str]:
    """Temporary extraction folders that should never survive a call."""
    return [p.name for p in target.glob(".extract-*")]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_record_json_shapes_are_understood():
    current = {"files": [{"key": "a.zip", "size": 3, "checksum": "md5:ABC", "links": {"self": "http://x/a"}}]}
    rdm = {
        "files": {
            "enabled": True,
            "entries": {
                "a.zip": {
                    "key": "a.zip",
                    "size": 3,
                    "checksum": "md5:abc",
                    "links": {"content": "http://x/c"},
                }
            },
        }
    }
    legacy = {
        "files": [
            {"filename": "a.zip", "filesize": 3, "checksum": "abc", "links": {"download": "http://x/d"}}
        ]
    }
    for record, url in ((current, "http://x/a"), (rdm, "http://x/c"), (legacy, "http://x/d")):
        f = parse_record_files(record, "http://x", "1")["a.zip"]
        assert (f.url, f.size, f.md5) == (url, 3, "abc")


def test_happy_path_downloads_unpacks_and_reports(zenodo, tmp_path, capsys):
    zenodo.files = {
        "engine_wiring.zip": autovi_zip("engine_wiring"),
        "pipe_clip.zip": autovi_zip("pipe_clip"),
    }
    target = tmp_path / "autovi"
    report = download_autovi(target, ["engine_wiring", "pipe_clip"], api_base=zenodo.base, **FAST)

    assert report["ok"], report["problems"]
    assert report["downloaded"] == ["engine_wiring", "pipe_clip"]
    ew = report["categories"]["engine_wiring"]
    assert ew["train_good"] == 3
    assert ew["test"] == {"fastening": 2, "good": 1}
    assert ew["ground_truth"] == {"fastening": 2}
    assert (target / "engine_wiring" / "defects_config.json").is_file()
    saved = json.loads((target / "layout_report.json").read_text())
    assert saved["categories"]["pipe_clip"]["train_good"] == 3
    assert not (target / PARTIAL_DIR_NAME).exists()  # verified zips removed after unpacking
    assert leftovers(target) == []
    table = format_layout_table(report)
    assert "engine_wiring" in table and "fastening:2" in table

    # second call: both categories complete -> skipped, nothing fetched
    before = len(zenodo.requests)
    again = download_autovi(target, ["engine_wiring", "pipe_clip"], api_base=zenodo.base, **FAST)
    assert again["skipped"] == ["engine_wiring", "pipe_clip"] and again["downloaded"] == []
    assert len(zenodo.requests) == before


def test_resume_uses_range_request(zenodo, tmp_path):
    data = autovi_zip()
    zenodo.files = {"engine_wiring.zip": data}
    target = tmp_path / "autovi"
    half = len(data) // 2
    (target / PARTIAL_DIR_NAME).mkdir(parents=True)
    (target / PARTIAL_DIR_NAME / "engine_wiring.zip.part").write_bytes(data[:half])

    report = download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)

    assert report["ok"]
    file_requests = [r for r in zenodo.requests if r[0].startswith("/files/")]
    assert file_requests == [("/files/engine_wiring.zip", f"bytes={half}-")]


def test_server_ignoring_range_restarts_from_zero(zenodo, tmp_path):
    data = autovi_zip()
    zenodo.files = {"engine_wiring.zip": data}
    zenodo.ignore_range = True
    target = tmp_path / "autovi"
    (target / PARTIAL_DIR_NAME).mkdir(parents=True)
    # garbage prefix: appending the full body to it would fail the checksum
    (target / PARTIAL_DIR_NAME / "engine_wiring.zip.part").write_bytes(b"x" * 1000)

    report = download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)
    assert report["ok"]
    assert zenodo.requests[-1][1] == "bytes=1000-"  # asked to resume, got a 200, restarted


def test_corrupted_download_raises_checksum_error_and_leaves_nothing(zenodo, tmp_path):
    data = autovi_zip()
    zenodo.files = {"engine_wiring.zip": data}
    zenodo.served = {"engine_wiring.zip": data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:]}
    target = tmp_path / "autovi"

    with pytest.raises(ChecksumError) as info:
        download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)

    msg = str(info.value)
    assert "engine_wiring.zip" in msg
    assert hashlib.md5(data).hexdigest() in msg
    assert hashlib.md5(zenodo.served["engine_wiring.zip"]).hexdigest() in msg
    assert not (target / "engine_wiring").exists()
    assert not (target / PARTIAL_DIR_NAME / "engine_wiring.zip.part").exists()
    assert leftovers(target) == []


def test_truncated_first_attempt_is_retried_and_resumed(zenodo, tmp_path):
    data = autovi_zip()
    zenodo.files = {"engine_wiring.zip": data}
    zenodo.truncate = {"engine_wiring.zip": "first"}
    target = tmp_path / "autovi"

    report = download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)

    assert report["ok"]
    ranges = [r[1] for r in zenodo.requests if r[0].startswith("/files/")]
    assert len(ranges) == 2 and ranges[0] is None
    # resumed from what was written before the cut (a partial last chunk may be lost)
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(data) // 2


def test_truncated_every_attempt_fails_and_leaves_no_category(zenodo, tmp_path):
    zenodo.files = {"engine_wiring.zip": autovi_zip()}
    zenodo.truncate = {"engine_wiring.zip": "always"}
    target = tmp_path / "autovi"

    with pytest.raises(DownloadError, match="after 3 attempts"):
        download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)

    assert zenodo.file_gets["engine_wiring.zip"] == 3
    assert not (target / "engine_wiring").exists()
    assert leftovers(target) == []
    assert not (target / PARTIAL_DIR_NAME / "engine_wiring.zip").exists()  # never a "verified" zip


def test_zip_slip_member_is_rejected(zenodo, tmp_path):
    zenodo.files = {"engine_wiring.zip": autovi_zip(extra={"engine_wiring/../../evil.txt": b"pwned"})}
    target = tmp_path / "data" / "autovi"

    with pytest.raises(UnsafeArchiveError, match=r"engine_wiring/\.\./\.\./evil\.txt"):
        download_autovi(target, ["engine_wiring"], api_base=zenodo.base, **FAST)

    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert not (target / "engine_wiring").exists()
    assert leftovers(target) == []


def _zip_with(member: zipfile.ZipInfo | str, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("engine_wiring/train/good/0000.png", _png(0))
        zf.writestr(member, data)
    return buf.getvalue()


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("engine_wiring/train/good/link.png")
    info.external_attr = (0o120777 << 16) & 0xFFFF0000
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("/etc/evil.txt", "absolute"),
        ("engine_wiring/../../x.txt", "escapes"),
        (_symlink_member(), "symbolic link"),
    ],
    ids=["absolute", "dotdot", "symlink"],
)
def test_unsafe_members_rejected_before_anything_is_written(tmp_path, member, why):
    zpath = tmp_path / "engine_wiring.zip"
    zpath.write_bytes(_zip_with(member, b"/etc/passwd"))
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract_category(zpath, target, "engine_wiring")
    assert list(target.iterdir()) == []


def test_unreachable_host_gives_clear_offline_message(tmp_path):
    target = tmp_path / "autovi"
    with pytest.raises(DownloadError) as info:
        download_autovi(target, "all", api_base=f"http://127.0.0.1:{free_port()}", **FAST)
    msg = str(info.value)
    assert "could not reach" in msg
    assert "machine with internet" in msg
    assert "--from-dir" in msg and "engine_wiring.zip" in msg and str(target) in msg
    assert not any(p.name in {"engine_wiring", "pipe_clip"} for p in target.iterdir())


def test_from_dir_verified_when_api_reachable(zenodo, tmp_path):
    good = autovi_zip()
    zenodo.files = {"engine_wiring.zip": good}
    src = tmp_path / "zips"
    src.mkdir()
    mid = len(good) // 2
    (src / "engine_wiring.zip").write_bytes(good[:mid] + bytes([good[mid] ^ 0xFF]) + good[mid + 1 :])
    with pytest.raises(ChecksumError, match="engine_wiring.zip"):
        download_autovi(tmp_path / "a", ["engine_wiring"], api_base=zenodo.base, from_dir=src, **FAST)
    assert (src / "engine_wiring.zip").exists()  # the user's own file is never deleted
    assert not (tmp_path / "a" / "engine_wiring").exists()

    (src / "engine_wiring.zip").write_bytes(good)
    report = download_autovi(tmp_path / "a", ["engine_wiring"], api_base=zenodo.base, from_dir=src, **FAST)
    assert report["ok"] and (src / "engine_wiring.zip").exists()
    assert not any(r[0].startswith("/files/") for r in zenodo.requests)


def test_from_dir_offline_warns_and_unpacks(tmp_path):
    src = tmp_path / "zips"
    src.mkdir()
    (src / "pipe_clip.zip").write_bytes(autovi_zip("pipe_clip"))
    with pytest.warns(UserWarning, match="without checksum verification"):
        report = download_autovi(
            tmp_path / "a", ["pipe_clip"], api_base=f"http://127.0.0.1:{free_port()}", from_dir=src, **FAST
        )
    assert report["ok"] and report["categories"]["pipe_clip"]["train_good"] == 3


def test_layout_check_reports_missing_train_good(tmp_path):
    root = tmp_path / "autovi"
    (root / "tank_screw" / "test" / "good").mkdir(parents=True)
    (root / "tank_screw" / "test" / "good" / "0000.png").write_bytes(_png(0, 4))
    report = check_autovi_layout(root, ["tank_screw", "pipe_staple"])
    assert not report["ok"]
    assert any("tank_screw: no images in train/good" in p for p in report["problems"])
    assert any("pipe_staple" in p and "missing" in p for p in report["problems"])
    assert (root / "layout_report.json").is_file()
    assert "PROBLEM" in format_layout_table(report)


def test_layout_check_warns_when_ground_truth_is_short(tmp_path):
    root = tmp_path / "autovi"
    for sub in ("train/good", "test/fastening"):
        (root / "pipe_clip" / sub).mkdir(parents=True)
        (root / "pipe_clip" / sub / "0000.png").write_bytes(_png(0, 4))
    report = check_autovi_layout(root)  # every sub-folder
    assert report["ok"] and list(report["categories"]) == ["pipe_clip"]
    assert report["warnings"] == [
        "pipe_clip: test/fastening has 1 images but ground_truth/fastening has 0 folders"
    ]
