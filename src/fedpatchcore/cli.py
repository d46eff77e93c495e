"""``fedpatchcore`` command line: fetch the AutoVI data and check its layout; ``kedro run``.

    fedpatchcore download [--categories engine_wiring pipe_clip ...] [--target data/01_raw/autovi]
                          [--api-base https://zenodo.org] [--from-dir DIR] [--retries N] [--no-progress]
    fedpatchcore check-layout ROOT [--categories ...]

Errors (unreachable host, checksum mismatch, unsafe zip) end with one line on stderr and a
non-zero exit code, no traceback. The pipelines themselves run with ``kedro run``.

Kedro imports ``<package>.cli`` and requires a click group named ``cli`` in it (otherwise every
``kedro`` command fails with "Cannot load commands from fedpatchcore.cli"); :data:`cli` provides
it and also makes ``kedro download ...`` / ``kedro check-layout ...`` work.

:data:`run` is Kedro's own ``kedro run`` (same options, same code) with one change: an
:class:`~fedpatchcore.core.common.errors.InputError` (a bad parameter, a missing saved result,
an image that contradicts the index) is reported through Kedro's CLI error path, a
``KedroCliError``: its message alone and exit code 1, instead of a rich traceback of ~150
lines (a bug, any other exception, keeps its traceback). Kedro picks a project's ``run``
over its own (``kedro run``) and ``python -m fedpatchcore`` runs it too.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Sequence

import click

from fedpatchcore.core.common.errors import InputError
from fedpatchcore.core.data.download import (
    AUTOVI_CATEGORIES,
    AUTOVI_LICENSE,
    AUTOVI_RECORD_ID,
    AUTOVI_RECORD_URL,
    DEFAULT_API_BASE,
    DEFAULT_TARGET,
    ChecksumError,
    DownloadError,
    check_autovi_layout,
    download_autovi,
    format_layout_table,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_LAYOUT_PROBLEM = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedpatchcore",
        description="Federated PatchCore: dataset utilities (pipelines run with `kedro run`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_download(sub)
    _add_check_layout(sub)
    return parser


def _add_download(sub) -> None:
    dl = sub.add_parser(
        "download",
        help="download and unpack AutoVI categories",
        description=(
            f"Download AutoVI (Zenodo record {AUTOVI_RECORD_ID}, {AUTOVI_RECORD_URL}, licence {AUTOVI_LICENSE}) "
            "category zips, verify their md5, unpack them safely and write layout_report.json."
        ),
    )
    dl.add_argument(
        "--categories",
        nargs="+",
        default=["all"],
        metavar="CATEGORY",
        help=f"'all' (default) or some of: {' '.join(AUTOVI_CATEGORIES)}",
    )
    dl.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"where the categories go (default {DEFAULT_TARGET})"
    )
    dl.add_argument(
        "--api-base", default=DEFAULT_API_BASE, help=f"Zenodo base URL (default {DEFAULT_API_BASE})"
    )
    dl.add_argument("--record-id", default=AUTOVI_RECORD_ID, help=argparse.SUPPRESS)
    dl.add_argument(
        "--from-dir",
        default=None,
        metavar="DIR",
        help="use <category>.zip files already downloaded into DIR instead of downloading",
    )
    dl.add_argument("--retries", type=int, default=4, help="retries per file (default 4)")
    dl.add_argument(
        "--backoff", type=float, default=1.0, help="first back-off in seconds, doubled each retry"
    )
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    dl.add_argument("--keep-zips", action="store_true", help="keep the verified zips in <target>/.partial")
    dl.add_argument("--no-progress", action="store_true", help="no progress bars or table")


def _add_check_layout(sub) -> None:
    chk = sub.add_parser(
        "check-layout",
        help="count images per category/defect and write layout_report.json",
        description="Check an AutoVI folder: train/good images, test images per defect, ground-truth folders.",
    )
    chk.add_argument("root", help="dataset root, e.g. data/01_raw/autovi")
    chk.add_argument(
        "--categories", nargs="+", default=None, metavar="CATEGORY", help="default: every sub-folder"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # restored when the block ends
        return _run(args)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"fedpatchcore: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "download":
            report = download_autovi(
                target_dir=args.target,
                categories=args.categories,
                api_base=args.api_base,
                record_id=args.record_id,
                retries=args.retries,
                backoff_s=args.backoff,
                timeout_s=args.timeout,
                progress=not args.no_progress,
                from_dir=args.from_dir,
                keep_zips=args.keep_zips,
            )
        else:
            report = check_autovi_layout(args.root, args.categories, save=True)
            print(format_layout_table(report))
    except ChecksumError as err:
        print(f"fedpatchcore: checksum error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except DownloadError as err:
        print(f"fedpatchcore: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fedpatchcore: interrupted (partial downloads are kept and resumed next time)", file=sys.stderr)
        return 130
    return EXIT_OK if report["ok"] else EXIT_LAYOUT_PROBLEM


# --- Kedro project commands ------------------------------------------------------------------

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


class _ProjectCommands(click.Group):
    """The project's ``kedro`` commands. ``run`` is built when Kedro asks for it, so the
    ``fedpatchcore`` console script never imports Kedro (which configures logging on import)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "run"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return _run_command() if name == "run" else super().get_command(ctx, name)


@click.group(name="fedpatchcore", cls=_ProjectCommands)
def cli() -> None:
    """fedpatchcore dataset commands (same as the `fedpatchcore` console script)."""


@cli.command("download", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _kedro_download(args: tuple[str, ...]) -> None:
    """Download and unpack AutoVI categories (see `fedpatchcore download --help`)."""
    raise SystemExit(main(["download", *args]))


@cli.command("check-layout", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _kedro_check_layout(args: tuple[str, ...]) -> None:
    """Check an AutoVI folder and write layout_report.json."""
    raise SystemExit(main(["check-layout", *args]))


@functools.cache
def _run_command() -> click.Command:
    """Kedro's ``kedro run`` (its options, its code) that shows an InputError as its message alone."""
    from kedro.framework.cli.project import run as kedro_run
    from kedro.framework.cli.utils import KedroCliError

    class InputErrorMessage(KedroCliError):
        """Kedro's CLI error, shown as the message alone on stderr (exit code 1).

        ``KedroCliError.show`` formats ``sys.exc_info()``, which click 8.5 no longer sets when it
        shows an error: it would print "NoneType: None" instead of the message.
        """

        def show(self, file=None) -> None:
            click.secho(self.format_message(), fg="yellow", err=True, file=file)

    def run_reporting_input_errors(**options):
        try:
            return kedro_run.callback(**options)
        except InputError as error:
            raise InputErrorMessage(str(error)) from error

    return click.Command(
        "run", callback=run_reporting_input_errors, params=kedro_run.params, help=kedro_run.help, short_help=kedro_run.short_help
    )


def __getattr__(name: str):
    # Kedro's find_run_command (``python -m fedpatchcore``) reads the module attribute ``run``.
    if name == "run":
        return _run_command()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
