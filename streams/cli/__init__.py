"""The ``carwatch`` command (DESIGN.md "The carwatch command"), one module per command group.

Invalid input never produces a traceback: unusable arguments or unreadable files print one line
``carwatch: error: ...`` on stderr and exit 2.
"""

import sys

import click

from streams.cli.alerts import alerts
from streams.cli.common import EXIT_USAGE
from streams.cli.feed import feed
from streams.cli.listeners import fhir_gateway, mllp
from streams.cli.replay import replay
from streams.cli.web import web
from streams.cli.worker import worker


@click.group()
def cli() -> None:
    """CAR-T Watch: lab monitoring after CD19 CAR T-cell therapy for B-ALL."""


for command in (replay, mllp, fhir_gateway, worker, feed, alerts, web):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for unusable arguments."""
    try:
        cli.main(args=argv, prog_name="carwatch", standalone_mode=False)
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


if __name__ == "__main__":
    sys.exit(main())
