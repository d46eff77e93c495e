"""Running the project never changes a tracked file (case 7 of issue 9).

kedro-telemetry appends ``[tool.kedro_telemetry] project_id`` to ``pyproject.toml`` on the first
``kedro`` command of a checkout unless the id is already there, so a fresh clone was dirty after
its first run. The id is committed now.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_holds_the_telemetry_project_id_so_kedro_telemetry_never_writes_it(tmp_path):
    from kedro_telemetry.plugin import _get_or_create_project_id

    pyproject = tmp_path / "pyproject.toml"
    shutil.copy(REPO_ROOT / "pyproject.toml", pyproject)
    before = pyproject.read_bytes()
    committed = tomllib.loads(before.decode())["tool"]["kedro_telemetry"]["project_id"]
    assert _get_or_create_project_id(pyproject) == committed
    assert pyproject.read_bytes() == before


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_kedro_run_leaves_a_fresh_checkout_clean(tmp_path):
    clone = tmp_path / "clone"
    # The working tree as a clone would hold it: tracked files plus new ones not ignored.
    tracked = _git(REPO_ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in tracked:
        source = REPO_ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    _git(clone, "init", "-q")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-q", "-m", "fresh clone")
    assert _git(clone, "status", "--porcelain") == ""

    # Telemetry left at its default (implicit consent): the path that used to write pyproject.toml.
    # Its event goes to a closed local port instead of the network; the kedro config dir
    # (telemetry.toml with the user id) goes to tmp_path instead of the user's home.
    env = {k: v for k, v in os.environ.items() if k not in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK")}
    env.update(
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    kedro = shutil.which("kedro", path=str(Path(sys.executable).parent)) or "kedro"
    params = (
        "dataset.synthetic.n_train=2,dataset.synthetic.n_test_good=1,dataset.synthetic.n_test_per_defect=1"
    )
    result = subprocess.run(
        [kedro, "run", "--pipeline", "ingest", "--params", params],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (clone / "data/02_intermediate/dataset_index.csv").is_file()  # it did run
    assert _git(clone, "status", "--porcelain") == ""
    assert (clone / "pyproject.toml").read_bytes() == (REPO_ROOT / "pyproject.toml").read_bytes()
