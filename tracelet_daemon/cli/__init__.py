"""The `tracelet` command: one module per subcommand."""

from __future__ import annotations

import sys

from ._signals import StopRequest, install_early

# `tracelet watch` under a supervisor may be told to stop while it is still importing (a second
# or more on a busy machine): from here on, before the imports below, SIGTERM/SIGINT is a stop
# request that the command honours (exit 0) instead of the default action (killed, exit -15).
_STARTUP_STOP: StopRequest | None = install_early(sys.argv)

from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from .._version import __version__  # noqa: E402
from ..errors import TraceletError, UsageError  # noqa: E402
from .health import health  # noqa: E402
from .inspect import inspect  # noqa: E402
from .status import status  # noqa: E402
from .upload import upload  # noqa: E402
from .watch import watch  # noqa: E402

app = typer.Typer(
    name="tracelet",
    help="Replay TensorBoard logs into Weights & Biases, live or after the fact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(watch)
app.command()(upload)
app.command()(inspect)
app.command()(status)
app.command()(health)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tracelet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Replay TensorBoard logs into Weights & Biases, live or after the fact."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors become one line on stderr and exit code 2."""
    try:
        rv = app(args=argv, prog_name="tracelet", standalone_mode=False, obj=_STARTUP_STOP)
        return rv if isinstance(rv, int) else 0
    except UsageError as exc:
        print(f"tracelet: error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except click_exc.NoArgsIsHelpError:
        app(args=["--help"], prog_name="tracelet", standalone_mode=False)
        return 2
    except click_exc.UsageError as exc:
        print(f"tracelet: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except click_exc.ClickException as exc:
        print(f"tracelet: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except TraceletError as exc:
        print(f"tracelet: error: {exc}", file=sys.stderr)
        return 1
