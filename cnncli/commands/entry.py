"""Running the command line: standard streams, signals, and the one place outcomes become exit codes.

cli.py says what the user can type; this module runs it. Every error is one line on stderr (a traceback only
with --debug or CNNCLI_DEBUG=1, see debug_from_environment); the codes are README's table (cnncli/errors.py).
"""

import os
import signal
import sys

import typer

from cnncli.commands.options import bare_option_values
from cnncli.commands.streams import DataOut, reserve_std_fds, say, stderr_on_null, utf8_streams
from cnncli.errors import (EXIT_GATE, EXIT_INTERNAL, EXIT_IOERR, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, CnnError,
                           UsageError, WriteError, one_line)


def _say(msg):
    say(msg)  # best effort: a closed or full stderr loses messages, never the run's work


def quiet_broken_pipe():
    """The reader of stdout went away (e.g. `| head -1`): stop quietly, and keep Python from complaining at
    exit, by pointing stdout at /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _on_sigterm(signum, frame):
    # Unwind like Ctrl-C does, so `finally` blocks run: predict's decode workers are stopped, locks released.
    raise SystemExit(EXIT_SIGTERM)


def _plain_help_without_color():
    # NO_COLOR: typer's rich help would still send bold and dim escapes to a terminal; no colour system, none.
    if os.environ.get("NO_COLOR"):
        try:
            import typer.rich_utils

            typer.rich_utils.COLOR_SYSTEM = None
        except ImportError:  # pragma: no cover - typer without rich: plain help anyway
            pass


def run(app, argv=None):
    """Run the typer app on argv (None: sys.argv) and exit with the documented code for how it ended."""
    reserve_std_fds()  # before anything is opened: no file may land on fd 1 or 2
    if sys.stderr is None:
        sys.stderr = stderr_on_null()
    utf8_streams()  # README promises UTF-8 lines whatever the locale (LC_ALL=C, PYTHONIOENCODING=latin-1)
    saved_stdout = sys.stdout
    data_closed = saved_stdout is None
    sys.stdout = DataOut(saved_stdout if not data_closed else open(os.devnull, "w"), closed=data_closed)
    import threading

    in_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    _plain_help_without_color()
    try:
        code = _run(app, argv)
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            quiet_broken_pipe()
        except WriteError as exc:
            _say(f"cnncli: error: {one_line(exc)}")
            code = EXIT_IOERR if code in (EXIT_OK, EXIT_GATE, 1) else code
    finally:
        sys.stdout = saved_stdout
        if in_main_thread:
            signal.signal(signal.SIGTERM, old_term)
    sys.exit(code)


# CNNCLI_DEBUG values that mean "off" (any case, surrounding blanks ignored); every other value turns tracebacks on.
DEBUG_OFF = ("", "0", "false", "no", "off")


def debug_from_environment():
    """True when $CNNCLI_DEBUG asks for tracebacks: set to anything but empty, 0, false, no or off."""
    return os.environ.get("CNNCLI_DEBUG", "").strip().lower() not in DEBUG_OFF


def _traceback():
    import traceback

    try:
        traceback.print_exc()
    except (OSError, ValueError):  # stderr closed or full: nowhere to show it
        pass


def _only_command(app, args):
    """The app with just the command args[0] names, when it names one: a run never uses the other commands' click
    objects, and building them all (train's 35 options) is start-up time. Otherwise (options first, --help of the
    group, a mistyped name) the whole app, so the group's help, errors and suggestions list every command."""
    import copy

    name = args[0] if args else None
    mine = [c for c in app.registered_commands if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]
    if len(mine) != 1 or app.registered_callback is None:  # without a callback typer would build no group
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = mine, []
    return one


def _run(app, argv):
    """Run the command line argv (None: sys.argv); returns the exit code."""
    try:  # typer >= 0.29 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.exceptions import ClickException

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debug_from_environment()
    if "--debug" in args:
        args.remove("--debug")
    args = bare_option_values(args)
    command = typer.main.get_command(_only_command(app, args))
    try:
        code = command.main(args=args, prog_name="cnncli", standalone_mode=False)
        code = code if isinstance(code, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except ClickException as exc:
        exc.show(file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:
        code = EXIT_SIGINT
    except CnnError as exc:
        if debug:
            _traceback()
        if isinstance(exc, UsageError):
            sub = next((a for a in args if a in command.commands), None) if hasattr(command, "commands") else None
            _say(f"Usage error: {one_line(exc)}\nTry 'cnncli {sub + ' ' if sub else ''}-h' for help.")
        else:
            _say(f"cnncli: error: {one_line(exc)}")
        code = exc.exit_code
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except BrokenPipeError:
        quiet_broken_pipe()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.__context__, BrokenPipeError):  # rich (help pages) exits 1 on a closed pipe: `| head -1`
            quiet_broken_pipe()
            code = 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no locals
        if debug:
            _traceback()
        first = str(exc).splitlines()[0] if str(exc).strip() else ""
        _say(f"cnncli: internal error: {type(exc).__name__}: {one_line(first)} "
             "(run again with --debug for a traceback)")
        code = EXIT_INTERNAL
    # typer turns Ctrl-C into a bare exit status 130, so the reason is said here, once, however the run ended.
    if code in (EXIT_SIGINT, EXIT_SIGTERM):
        _say("cnncli: interrupted" if code == EXIT_SIGINT else "cnncli: terminated")
    return code
