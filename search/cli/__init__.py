"""The ``gradsweep`` command line (``gradsweep --help`` lists its commands).

User errors (bad config, unknown names, unreachable addresses) end with one line on stderr and
exit code 2; tracebacks appear only with ``--debug``. One module per kind of command:
:mod:`~search.cli.study` (run, resume, confirm, sync), :mod:`~search.cli.reading` (leaderboard,
report, activations, presets), :mod:`~search.cli.jobs` (studies as Ray jobs).
"""

from __future__ import annotations

import sys
from importlib import import_module

import typer

from search.cli.interrupts import sigterm_as_ctrl_c
from search.cli.terminal import app, err, out

# Each module registers its commands on ``app``; the help lists them in this order.
for _commands in ("study", "warm", "reading", "jobs"):
    import_module(f"search.cli.{_commands}")

__all__ = ["app", "entry", "main", "sigterm_as_ctrl_c"]


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: one line and exit 2 for user errors, tracebacks only with
    --debug. Returns the exit code (and exits with it when run as a script)."""
    from typer._click import exceptions as click  # typer vendors click

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="gradsweep", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        out.print(exc.ctx.get_help() if exc.ctx else "gradsweep --help")
        return 0
    except click.UsageError as exc:  # unknown option, missing argument, bad flag value
        err.print(f"[bold red]error:[/] {exc.format_message()}", soft_wrap=True, highlight=False)
        return 2
    except click.ClickException as exc:
        err.print(f"[bold red]error:[/] {exc.format_message()}", soft_wrap=True, highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # an unexpected failure: one line unless --debug
        if "--debug" in args:
            raise
        err.print(
            f"[bold red]error:[/] {exc.__class__.__name__}: {exc} (rerun with --debug for details)",
            soft_wrap=True,
            highlight=False,
        )
        return 1
    return code if isinstance(code, int) else 0


def entry() -> None:
    """The ``gradsweep`` console script."""
    sys.exit(main())
