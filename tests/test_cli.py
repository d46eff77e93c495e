"""The `fedpatchcore` command: exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from fedpatchcore.cli import main
from tests.core.data.test_download import autovi_zip, free_port, zenodo  # noqa: F401  (zenodo is a fixture)


def _fast(*args: str) -> list[str]:
    return [*args, "--retries", "1", "--backoff", "0.01", "--timeout", "5", "--no-progress"]


def test_download_then_check_layout(zenodo, tmp_path, capsys):  # noqa: F811
    zenodo.files = {"pipe_staple.zip": autovi_zip("pipe_staple")}
    target = tmp_path / "autovi"
    code = main(
        _fast("download", "--categories", "pipe_staple", "--target", str(target), "--api-base", zenodo.base)
    )
    assert code == 0
    assert (
        json.loads((target / "layout_report.json").read_text())["categories"]["pipe_staple"]["train_good"]
        == 3
    )

    code = main(["check-layout", str(target)])
    out = capsys.readouterr().out
    assert code == 0
    assert "pipe_staple" in out and "train/good" in out


def test_check_layout_problem_gives_nonzero_exit(tmp_path, capsys):
    (tmp_path / "tank_screw" / "train" / "good").mkdir(parents=True)
    assert main(["check-layout", str(tmp_path)]) == 3
    assert "no images in train/good" in capsys.readouterr().out


def test_unreachable_host_is_one_line_without_traceback(tmp_path, capsys):
    code = main(
        _fast("download", "--target", str(tmp_path / "a"), "--api-base", f"http://127.0.0.1:{free_port()}")
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fedpatchcore: error: could not reach") and "--from-dir" in err


def test_checksum_error_is_one_line(zenodo, tmp_path, capsys):  # noqa: F811
    good = autovi_zip()
    zenodo.files = {"engine_wiring.zip": good}
    zenodo.served = {"engine_wiring.zip": good[:50] + b"\x00" * 50 + good[100:]}
    code = main(
        _fast(
            "download", "--categories", "engine_wiring", "--target", str(tmp_path), "--api-base", zenodo.base
        )
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "checksum mismatch for engine_wiring.zip" in err


def test_from_dir_offline(tmp_path, capsys):
    src = tmp_path / "zips"
    src.mkdir()
    (src / "underbody_screw.zip").write_bytes(autovi_zip("underbody_screw"))
    argv = _fast(
        "download",
        *("--categories", "underbody_screw", "--target", str(tmp_path / "a")),
        *("--from-dir", str(src), "--api-base", f"http://127.0.0.1:{free_port()}"),
    )
    assert main(argv) == 0
    assert "fedpatchcore: warning: could not verify" in capsys.readouterr().err
    assert (tmp_path / "a" / "underbody_screw" / "train" / "good" / "0000.png").is_file()


def test_unknown_category_is_a_clear_error(tmp_path, capsys):
    assert main(_fast("download", "--categories", "bolts", "--target", str(tmp_path))) == 1
    assert "unknown AutoVI categories ['bolts']" in capsys.readouterr().err


def test_kedro_finds_a_click_group_named_cli(tmp_path):
    """Kedro imports fedpatchcore.cli and fails on every command unless it has `cli`."""
    from click.testing import CliRunner

    from fedpatchcore import cli as module

    (tmp_path / "pipe_clip" / "train" / "good").mkdir(parents=True)
    result = CliRunner().invoke(module.cli, ["check-layout", str(tmp_path)])
    assert result.exit_code == 3 and "no images in train/good" in result.output


def test_check_layout_of_missing_root_fails(tmp_path, capsys):
    assert main(["check-layout", str(tmp_path / "nowhere")]) == 3
    assert "does not exist" in capsys.readouterr().out


def test_the_project_run_is_kedros_run_with_its_options():
    """`kedro run` and `python -m fedpatchcore` find the project's run: Kedro's own command."""
    from kedro.framework.cli.project import run as kedro_run
    from kedro.framework.cli.utils import find_run_command

    from fedpatchcore import cli as module

    assert module.cli.get_command(None, "run") is module.run
    assert find_run_command("fedpatchcore") is module.run  # what `python -m fedpatchcore` runs (it failed: no cli.run)
    assert [p.name for p in module.run.params] == [p.name for p in kedro_run.params]
    assert "run" in module.cli.list_commands(None)


def test_the_console_script_does_not_import_kedro():
    # Importing Kedro configures logging (a log line on every `fedpatchcore download`) and costs ~1 s.
    code = "import sys, fedpatchcore.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'kedro'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
