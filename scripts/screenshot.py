"""Headless-Chromium screenshots of the run report and of the kedro-viz page of a pipeline.

    python scripts/screenshot.py report --out docs/report.png --height 2400 --colours 128   # newest report.html
    python scripts/screenshot.py viz --pipeline federated --out docs/kedro_viz_federated.png \
        --width 1600 --height 1000 --colours 64

Needs Debian's ``chromium`` (``apt-get install -y chromium``); nothing is fetched from the
network. ``viz`` runs ``kedro viz build`` (offline) and serves ``build/`` over HTTP on
127.0.0.1, as kedro-viz's static site needs (``file://`` does not load its API files).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# kedro-viz keeps its settings in localStorage["KedroViz"]; this turns the onboarding hints off.
VIZ_SETTINGS = '{"showFeatureHints": false}'


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no headless browser: apt-get install -y chromium")


def screenshot(url: str, out: str | Path, width: int = 1280, height: int = 2000, wait_ms: int = 10000) -> Path:
    """Load ``url`` in headless Chromium for ``wait_ms`` of virtual time and save a PNG."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}",
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return out


@contextlib.contextmanager
def serve(directory: str | Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def build_viz(project: Path) -> Path:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = shutil.which("kedro", path=str(Path(sys.executable).parent)) or "kedro"
    subprocess.run([kedro, "viz", "build", "--include-previews"], cwd=project, env=env, check=True)
    return project / "build"


def viz_screenshot(project: Path, out: Path, pipeline: str, width: int, height: int) -> Path:
    build = build_viz(project)
    # A same-origin page that switches the onboarding hints off, then opens the pipeline.
    opener = build / "_screenshot.html"
    target = f"/?pid={pipeline}&expandAllPipelines=true"
    opener.write_text(
        f"<!DOCTYPE html><script>localStorage.setItem('KedroViz', '{VIZ_SETTINGS}');"
        f"location.replace('{target}');</script>"
    )
    try:
        with serve(build) as base:
            return screenshot(f"{base}/_screenshot.html", out, width, height, wait_ms=20000)
    finally:
        opener.unlink(missing_ok=True)


def newest_report(project: Path) -> Path:
    versions = sorted((project / "data/08_reporting/report.html").glob("*/report.html"))
    if not versions:
        raise FileNotFoundError("no report.html yet: run `kedro run` first")
    return versions[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["report", "viz"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--project", default=Path.cwd(), type=Path)
    parser.add_argument("--pipeline", default="federated", help="viz: the registered pipeline shown")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--colours", type=int, default=0, help="reduce the PNG to this many colours (0: keep all)")
    args = parser.parse_args(argv)
    if args.what == "report":
        shot = screenshot(newest_report(args.project).as_uri(), args.out, args.width, args.height)
    else:
        shot = viz_screenshot(args.project.resolve(), args.out, args.pipeline, args.width, args.height)
    if args.colours:
        from PIL import Image

        with Image.open(shot) as image:
            reduced = image.convert("RGB").quantize(colors=args.colours)
        reduced.save(shot, optimize=True)
    print(shot)


if __name__ == "__main__":
    main()
