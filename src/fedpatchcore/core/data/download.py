"""Fetch the AutoVI dataset from Zenodo, safely, resumably, and check what landed on disk.

AutoVI (Renault, Zenodo record 10459003, licence CC BY-NC-SA 4.0) ships one zip per product
category. :func:`download_autovi` turns those zips into ``<target>/<category>/...``:

* the record API (``GET {api_base}/api/records/{record_id}``) gives every file's name, size,
  md5 checksum and download link;
* each zip is streamed to ``<target>/.partial/<name>.part``; an interrupted download is resumed
  with an HTTP ``Range`` request (a server that ignores ``Range`` is handled by restarting);
  connection errors, 5xx answers and truncated bodies are retried with exponential back-off;
* the md5 is checked before anything is unpacked (:class:`ChecksumError` on mismatch);
* unpacking rejects members that would land outside the target (zip-slip, absolute paths,
  symlinks), extracts into a temporary folder beside the target and renames the category
  folder into place only once everything is written: a category folder either is complete or
  does not exist;
* a category that is already present (its ``train/good`` holds images) is skipped.

Machines without internet: download the zips elsewhere and pass ``from_dir``.

No kedro in here: this module is plain Python (requests, tqdm).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import requests
from tqdm import tqdm

from fedpatchcore.core.data.autovi import AUTOVI_CATEGORIES

AUTOVI_RECORD_ID = "10459003"
AUTOVI_RECORD_URL = f"https://zenodo.org/records/{AUTOVI_RECORD_ID}"
AUTOVI_LICENSE = "CC BY-NC-SA 4.0"
DEFAULT_API_BASE = "https://zenodo.org"
DEFAULT_TARGET = "data/01_raw/autovi"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
LAYOUT_REPORT_NAME = "layout_report.json"
PARTIAL_DIR_NAME = ".partial"
_EXTRACT_PREFIX = ".extract-"
_IGNORED_TOP_LEVEL = {"__MACOSX"}


class DownloadError(RuntimeError):
    """The dataset could not be fetched or unpacked; the message says what to do."""


class ChecksumError(DownloadError):
    """A downloaded (or supplied) file does not have the md5 the record API announces."""

    def __init__(self, name: str, expected: str, actual: str):
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(f"checksum mismatch for {name}: expected md5 {expected}, got md5 {actual}")


class UnsafeArchiveError(DownloadError):
    """A zip member would be written outside the target folder (or is a symlink)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Zenodo record, as the record API describes it."""

    name: str
    url: str
    size: int | None
    md5: str | None


# ---------------------------------------------------------------------------------------------
# Record API
# ---------------------------------------------------------------------------------------------


def offline_message(api_base: str, target_dir: str | Path, reason: object = "") -> str:
    """What to tell a user whose machine cannot reach the record API."""
    zips = ", ".join(f"{c}.zip" for c in AUTOVI_CATEGORIES)
    detail = f" ({reason})" if reason else ""
    return (
        f"could not reach {api_base}{detail}. The AutoVI dataset must be downloaded on a machine "
        f"with internet access: get the category zips ({zips}) from {AUTOVI_RECORD_URL} "
        f"(licence {AUTOVI_LICENSE}), copy them into one folder on this machine and run "
        f"`fedpatchcore download --from-dir <that folder> --target {target_dir}`, "
        f"or unzip them yourself so that {target_dir}/<category>/train/good exists."
    )


def _parse_checksum(value: object) -> str | None:
    if not value:
        return None
    text = str(value)
    algo, sep, digest = text.partition(":")
    if not sep:  # bare hex digest
        return text.lower()
    return digest.lower() if algo.lower() == "md5" else None


def parse_record_files(record: dict, api_base: str, record_id: str) -> dict[str, RemoteFile]:
    """File name -> :class:`RemoteFile` from a Zenodo record JSON.

    Supports the current record API (``files`` is a list of ``{key, size, checksum: "md5:...",
    links: {self}}``), the InvenioRDM files form (``files: {entries: [...] or {...}}`` with
    ``links.content``) and the legacy deposit form (``filename``, ``links.download``).
    """
    files = record.get("files")
    if isinstance(files, dict):
        entries = files.get("entries") or []
        files = list(entries.values()) if isinstance(entries, dict) else entries
    if not isinstance(files, list):
        raise DownloadError(f"unexpected answer from the record API for record {record_id}: no file list")
    out: dict[str, RemoteFile] = {}
    base = api_base.rstrip("/")
    for entry in files:
        name = entry.get("key") or entry.get("filename")
        if not name:
            continue
        links = entry.get("links") or {}
        url = (
            links.get("self")
            or links.get("content")
            or links.get("download")
            or f"{base}/api/records/{record_id}/files/{name}/content"
        )
        size = entry.get("size", entry.get("filesize"))
        out[name] = RemoteFile(
            name=name,
            url=url,
            size=int(size) if size is not None else None,
            md5=_parse_checksum(entry.get("checksum")),
        )
    return out


def fetch_record_files(
    api_base: str = DEFAULT_API_BASE,
    record_id: str = AUTOVI_RECORD_ID,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    session: requests.Session | None = None,
    target_dir: str | Path = DEFAULT_TARGET,
) -> dict[str, RemoteFile]:
    """Ask the record API which files the record holds. Unreachable host -> :class:`DownloadError`."""
    url = f"{api_base.rstrip('/')}/api/records/{record_id}"
    http = session or requests.Session()
    last: object = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            response = http.get(url, timeout=timeout_s, headers={"Accept": "application/json"})
        except (requests.ConnectionError, requests.Timeout) as err:
            last = err.__class__.__name__
            continue
        if response.status_code >= 500 or response.status_code == 429:
            last = f"HTTP {response.status_code}"
            continue
        if response.status_code != 200:
            raise DownloadError(f"record API {url} answered HTTP {response.status_code}")
        try:
            record = response.json()
        except ValueError as err:
            raise DownloadError(f"record API {url} did not answer JSON") from err
        return parse_record_files(record, api_base, record_id)
    raise DownloadError(offline_message(api_base, target_dir, last))


# ---------------------------------------------------------------------------------------------
# One file: resumable, retried, verified
# ---------------------------------------------------------------------------------------------


def md5_of(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class _Retryable(Exception):
    """A failed attempt worth repeating (connection error, 5xx, truncated body)."""


def _content_range_start(header: str | None) -> int | None:
    # "bytes 100-199/200"
    if not header or not header.startswith("bytes "):
        return None
    try:
        return int(header[6:].split("-", 1)[0])
    except ValueError:
        return None


def _attempt(
    http: requests.Session,
    remote: RemoteFile,
    part: Path,
    timeout_s: float,
    chunk_size: int,
    progress: bool,
) -> None:
    have = part.stat().st_size if part.exists() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0
    if remote.size is not None and have == remote.size:
        return  # complete already; the checksum decides
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = http.get(remote.url, headers=headers, stream=True, timeout=timeout_s)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _Retryable(f"{err.__class__.__name__}") from err
    with response:
        status = response.status_code
        if status == 416:  # our offset is past what the server has: start over
            part.unlink(missing_ok=True)
            raise _Retryable("HTTP 416 (range not satisfiable), restarting")
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}")
        if status not in (200, 206):
            raise DownloadError(f"downloading {remote.name} from {remote.url} failed: HTTP {status}")
        if status == 206 and _content_range_start(response.headers.get("Content-Range")) == have:
            mode = "ab"
        else:  # 200 (server ignored Range) or a range we did not ask for: restart from byte 0
            mode, have = "wb", 0
        with (
            open(part, mode) as fh,
            tqdm(
                total=remote.size,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=remote.name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                for block in response.iter_content(chunk_size=chunk_size):
                    fh.write(block)
                    bar.update(len(block))
            except (requests.RequestException, ConnectionError) as err:
                # requests wraps urllib3's IncompleteRead/ProtocolError (server closed early),
                # read timeouts and resets; a local OSError (disk full) is not caught here
                raise _Retryable(f"connection lost ({err.__class__.__name__})") from err
    got = part.stat().st_size
    if remote.size is not None and got < remote.size:
        raise _Retryable(f"truncated body: {got} of {remote.size} bytes")


def download_file(
    remote: RemoteFile,
    partial_dir: str | Path,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Download one file into ``partial_dir``, resuming ``<name>.part``; return the verified file.

    The verified file is ``partial_dir/<name>``. A checksum mismatch deletes the part file and
    raises :class:`ChecksumError`. When all attempts fail, the part file is kept so a later run
    resumes from it, and :class:`DownloadError` is raised.
    """
    partial_dir = Path(partial_dir)
    partial_dir.mkdir(parents=True, exist_ok=True)
    final = partial_dir / remote.name
    part = partial_dir / f"{remote.name}.part"
    http = session or requests.Session()
    if final.exists():  # verified earlier, not yet unpacked
        if remote.md5 is None or md5_of(final, chunk_size) == remote.md5:
            return final
        final.unlink()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _attempt(http, remote, part, timeout_s, chunk_size, progress)
            break
        except _Retryable as err:
            last = str(err)
    else:
        raise DownloadError(
            f"downloading {remote.name} failed after {retries + 1} attempts ({last}); the partial file "
            f"{part} is kept and the next run resumes from it"
        )
    if remote.md5 is not None:
        actual = md5_of(part, chunk_size)
        if actual != remote.md5:
            part.unlink(missing_ok=True)
            raise ChecksumError(remote.name, remote.md5, actual)
    os.replace(part, final)
    return final


# ---------------------------------------------------------------------------------------------
# Safe unpacking
# ---------------------------------------------------------------------------------------------


def _check_member(info: zipfile.ZipInfo, root: Path) -> Path | None:
    """Where a member would land inside ``root``; ``None`` for entries to skip; raises if unsafe."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"unsafe zip member {name!r}: symbolic links are not allowed")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"unsafe zip member {name!r}: absolute path")
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise UnsafeArchiveError(f"unsafe zip member {name!r}: path escapes the target folder")
    if not parts or parts[0] in _IGNORED_TOP_LEVEL:
        return None
    dest = (root / Path(*parts)).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"unsafe zip member {name!r}: path escapes the target folder")
    return dest


def _find_category_root(extracted: Path, category: str) -> Path:
    if (extracted / category / "train").is_dir():
        return extracted / category
    if (extracted / "train").is_dir():
        return extracted
    tops = [p for p in extracted.iterdir() if p.name not in _IGNORED_TOP_LEVEL and not p.name.startswith(".")]
    if len(tops) == 1 and (tops[0] / "train").is_dir():
        return tops[0]
    if (extracted / category).is_dir():  # let the layout check report what is missing
        return extracted / category
    raise DownloadError(
        f"the zip for {category} has no {category}/train folder; found {sorted(p.name for p in tops)}"
    )


def safe_extract_category(zip_path: str | Path, target_dir: str | Path, category: str) -> Path:
    """Unpack ``zip_path`` into ``target_dir/category`` atomically; return that folder.

    Every member is checked before anything is written. The files go to a temporary folder
    inside ``target_dir`` that is renamed into place at the end and removed on any failure
    (also on KeyboardInterrupt).
    """
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    dest = target_dir / category
    if dest.exists():
        raise DownloadError(
            f"{dest} already exists but is incomplete (no images in train/good); remove it and run again"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f"{_EXTRACT_PREFIX}{category}-", dir=target_dir))
    try:
        try:
            zf = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{zip_path} is not a valid zip file ({err})") from err
        with zf:
            plan = [(info, _check_member(info, tmp)) for info in zf.infolist()]
            for info, out in plan:
                if out is None:
                    continue
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        root = _find_category_root(tmp, category)
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _clean_stale_extractions(target_dir: Path) -> None:
    """Remove temporary folders left by a run that was killed mid-extraction."""
    for stale in target_dir.glob(f"{_EXTRACT_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Layout check
# ---------------------------------------------------------------------------------------------


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _category_is_complete(folder: Path) -> bool:
    return _count_images(folder / "train" / "good") > 0


def check_autovi_layout(root: str | Path, categories: Iterable[str] | None = None, save: bool = True) -> dict:
    """Count what each category folder under ``root`` holds.

    Per category: ``train_good`` (images), ``test`` (images per defect type), ``ground_truth``
    (per defect type, the number of per-image folders holding one PNG per defect channel) and
    ``problems``. A missing category, an empty ``train/good`` or a missing ``test`` folder is a
    problem (``ok`` is false); a defect type whose test images and ground-truth folders differ in
    number is only a ``warning``. ``categories=None``
    checks every non-hidden sub-folder. The report is saved as ``root/layout_report.json``
    when ``save`` is true (a read-only root only warns).
    """
    root = Path(root)
    if categories is None:
        cats = (
            sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if root.is_dir()
            else []
        )
    else:
        cats = list(categories)
    report: dict = {"root": str(root), "categories": {}, "problems": [], "warnings": []}
    for cat in cats:
        folder = root / cat
        entry: dict = {
            "present": folder.is_dir(),
            "train_good": 0,
            "test": {},
            "ground_truth": {},
            "problems": [],
            "warnings": [],
        }
        if not folder.is_dir():
            entry["problems"].append(f"{cat}: folder {folder} is missing")
        else:
            entry["train_good"] = _count_images(folder / "train" / "good")
            if entry["train_good"] == 0:
                entry["problems"].append(f"{cat}: no images in train/good")
            test_dir = folder / "test"
            if test_dir.is_dir():
                for defect in sorted(p for p in test_dir.iterdir() if p.is_dir()):
                    entry["test"][defect.name] = _count_images(defect)
            else:
                entry["problems"].append(f"{cat}: no test folder")
            gt_dir = folder / "ground_truth"
            if gt_dir.is_dir():
                for defect in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
                    entry["ground_truth"][defect.name] = sum(1 for p in defect.iterdir() if p.is_dir())
            for defect, n_test in entry["test"].items():
                if defect == "good":
                    continue
                n_gt = entry["ground_truth"].get(defect, 0)
                if n_gt != n_test:
                    entry["warnings"].append(
                        f"{cat}: test/{defect} has {n_test} images but ground_truth/{defect} has {n_gt} folders"
                    )
        report["categories"][cat] = entry
        report["problems"].extend(entry["problems"])
        report["warnings"].extend(entry["warnings"])
    if not root.is_dir():
        report["problems"].insert(0, f"dataset root {root} does not exist")
    elif not cats:
        report["problems"].append(f"no category folders under {root}")
    report["ok"] = not report["problems"]
    if save and root.is_dir():
        try:
            (root / LAYOUT_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        except OSError as err:
            warnings.warn(f"could not write {root / LAYOUT_REPORT_NAME}: {err}", stacklevel=2)
    return report


def format_layout_table(report: dict) -> str:
    """The layout report as a plain-text table (one row per category, then the problems)."""
    header = ("category", "train/good", "test images", "test defect types", "gt folders", "status")
    rows = [header]
    for cat, e in report["categories"].items():
        n_test = sum(e["test"].values())
        defects = ", ".join(f"{d}:{n}" for d, n in e["test"].items()) or "-"
        rows.append(
            (
                cat,
                str(e["train_good"]),
                str(n_test),
                defects,
                str(sum(e["ground_truth"].values())),
                "ok" if not e["problems"] else "PROBLEM",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for problem in report["problems"]:
        lines.append(f"problem: {problem}")
    for warning in report.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The whole dataset
# ---------------------------------------------------------------------------------------------


def resolve_categories(categories: str | Sequence[str] | None) -> list[str]:
    """``"all"``/``None`` -> every AutoVI category; otherwise the given names, checked."""
    if categories is None or categories == "all" or list(categories) == ["all"]:
        return list(AUTOVI_CATEGORIES)
    names = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in names if c not in AUTOVI_CATEGORIES]
    if unknown:
        raise DownloadError(f"unknown AutoVI categories {unknown}; choose from {list(AUTOVI_CATEGORIES)}")
    return list(dict.fromkeys(names))


def _record_files(
    api_base: str,
    record_id: str,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    session: requests.Session,
    target: Path,
    from_dir: str | Path | None,
) -> dict[str, RemoteFile] | None:
    """The record's files and md5s. Downloading needs them; zips taken from ``from_dir`` are only
    checked against them when the API answers one quick attempt (None, with a warning, if not)."""
    if from_dir is None:
        return fetch_record_files(api_base, record_id, retries, backoff_s, timeout_s, session, target)
    try:
        return fetch_record_files(api_base, record_id, 0, backoff_s, min(timeout_s, 15), session, target)
    except DownloadError as err:
        warnings.warn(
            f"could not verify the zips in {from_dir} against the record API ({err.__class__.__name__}: "
            f"{api_base} unreachable); using them without checksum verification",
            stacklevel=3,
        )
        return None


def _unpack_local_zip(
    zip_path: Path, cat: str, remote_files: dict[str, RemoteFile] | None, target: Path, chunk_size: int
) -> None:
    """Unpack a category zip downloaded elsewhere, after its md5 check when the record's is known."""
    if not zip_path.is_file():
        raise DownloadError(f"{zip_path} not found: put the AutoVI zip of {cat} there ({AUTOVI_RECORD_URL})")
    remote = (remote_files or {}).get(zip_path.name)
    if remote is not None and remote.md5 is not None:
        actual = md5_of(zip_path, chunk_size)
        if actual != remote.md5:
            raise ChecksumError(str(zip_path), remote.md5, actual)
    safe_extract_category(zip_path, target, cat)


def download_autovi(
    target_dir: str | Path = DEFAULT_TARGET,
    categories: str | Sequence[str] = "all",
    api_base: str = DEFAULT_API_BASE,
    record_id: str = AUTOVI_RECORD_ID,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    from_dir: str | Path | None = None,
    keep_zips: bool = False,
) -> dict:
    """Fetch (or take from ``from_dir``) the AutoVI category zips and unpack them into ``target_dir``.

    Returns the layout report of :func:`check_autovi_layout` (also written to
    ``target_dir/layout_report.json``) with two more keys: ``downloaded`` (categories unpacked by
    this call) and ``skipped`` (already present and complete). ``from_dir`` holds
    ``<category>.zip`` files downloaded elsewhere; they are checked against the record API's
    md5 when it is reachable, otherwise used with a warning. Verified zips are deleted after
    unpacking unless ``keep_zips``.
    """
    target = Path(target_dir)
    cats = resolve_categories(categories)
    target.mkdir(parents=True, exist_ok=True)
    _clean_stale_extractions(target)
    partial = target / PARTIAL_DIR_NAME
    todo = [c for c in cats if not _category_is_complete(target / c)]
    skipped = [c for c in cats if c not in todo]
    for cat in skipped:
        _say(progress, f"{cat}: already present, skipped")

    session = requests.Session()
    remote_files = None
    if todo:
        remote_files = _record_files(api_base, record_id, retries, backoff_s, timeout_s, session, target, from_dir)
    for cat in todo:
        if from_dir is not None:
            _unpack_local_zip(Path(from_dir) / f"{cat}.zip", cat, remote_files, target, chunk_size)
        else:
            remote = remote_files.get(f"{cat}.zip")
            if remote is None:
                raise DownloadError(
                    f"record {record_id} at {api_base} has no file {cat}.zip (it has {sorted(remote_files)})"
                )
            zip_path = download_file(remote, partial, retries, backoff_s, timeout_s, chunk_size, progress, session)
            safe_extract_category(zip_path, target, cat)
            if not keep_zips:
                zip_path.unlink(missing_ok=True)
        _say(progress, f"{cat}: unpacked into {target / cat}")
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()

    report = check_autovi_layout(target, cats, save=True)
    report["downloaded"] = todo
    report["skipped"] = skipped
    (target / LAYOUT_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        print(format_layout_table(report))
    return report


def _say(enabled: bool, message: str) -> None:
    if enabled:
        tqdm.write(message)
