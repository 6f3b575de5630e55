"""The ``carwatch`` command (DESIGN.md "The carwatch command"), one module per command group.

Invalid input never produces a traceback: unusable arguments or unreadable files print one line
``carwatch: error: ...`` on stderr and exit 2. So does a ``CARWATCH_*`` variable that no setting
reads (``streams.settings.check_environment``), before any command starts.
"""

import os
import sys

import click

from streams.cli.alerts import alerts
from streams.cli.common import DEPRECATED_OPTIONS, EXIT_USAGE, UsageFailure
from streams.cli.feed import feed
from streams.cli.listeners import fhir_gateway, mllp
from streams.cli.replay import replay
from streams.cli.worker import worker


@click.group()
@click.version_option(package_name="carwatch", prog_name="carwatch", message="%(prog)s %(version)s")
def cli() -> None:
    """CAR-T Watch: lab monitoring after CD19 CAR T-cell therapy for B-ALL."""
    from streams.settings import UnknownSetting, check_environment

    try:
        check_environment(os.environ)
    except UnknownSetting as exc:
        raise UsageFailure(str(exc)) from exc


for command in (replay, mllp, fhir_gateway, worker, feed, alerts):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for unusable arguments."""
    args = _current_spellings(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="carwatch", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        click.echo(f"carwatch: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"carwatch: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("carwatch: aborted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    return 0


def _current_spellings(args: list[str]) -> list[str]:
    """``--loglevel info`` → ``--log-level info``, with a warning (``DEPRECATED_OPTIONS``)."""
    out = []
    for arg in args:
        name, equals, value = arg.partition("=")
        if name in DEPRECATED_OPTIONS:
            new = DEPRECATED_OPTIONS[name]
            click.echo(f"carwatch: warning: {name} is deprecated, use {new}", err=True)
            arg = f"{new}{equals}{value}"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
