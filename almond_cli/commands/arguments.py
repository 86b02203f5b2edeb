"""The one argument style of almond's subcommands besides ``train``: ``almond <command> <folder> key=value ...``,
Hydra-like, parsed and checked by one parser.

Unknown keys and bad values are refused the way ``almond train`` refuses them (one paragraph naming the key,
exit code 2), and ``almond <command> --help`` lists every key with its default and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UsageError, fail


@dataclass
class Argument:
    """One ``key=value`` argument: how to parse it, its default, a check returning an error or None, its meaning."""

    parse: Callable[[str], Any]
    default: Any
    check: Callable[[Any], str | None] = lambda value: None
    help: str = ""


@dataclass
class Command:
    """A subcommand: the folder it takes, what it does, its arguments, and ``run(folder, **values)``; with
    ``several_folders`` it takes one or more folders and ``run`` gets their list."""

    name: str
    folder: str
    example: str
    description: str
    arguments: dict[str, Argument]
    run: Callable[..., Any]
    several_folders: bool = False

    def usage(self) -> str:
        folders = f"<{self.folder}> [<{self.folder}> ...]" if self.several_folders else f"<{self.folder}>"
        return f"almond {self.name} {folders} " + " ".join(f"[{key}=...]" for key in self.arguments)


def positive(value) -> str | None:
    return None if value is not None and value > 0 else f"must be > 0, got {value}"


def at_least(minimum):
    return lambda value: None if value >= minimum else f"must be >= {minimum}, got {value}"


def optional_int(text: str):
    return None if text in ("null", "none", "") else int(text)


def boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise ValueError(text)


def optional_str(text: str):
    return None if text in ("null", "none", "") else text


# Arguments several commands share.
DEVICE = Argument(
    str,
    "auto",
    lambda v: (
        None
        if v in ("auto", "cpu", "cuda") or v.startswith("cuda:")
        else f"must be auto, cpu, cuda or cuda:N, got {v!r}"
    ),
    "auto, cpu, cuda or cuda:N",
)
THREADS = Argument(
    optional_int,
    None,
    lambda v: None if v is None or v >= 1 else f"must be >= 1, got {v}",
    "CPU threads, an integer >= 1; null: the cores other processes leave free",
)


def parse_arguments(command: Command, args: list[str]) -> tuple[Path | list[Path], dict]:
    """Splits ``<folder> key=value ...`` (several folders for a command that takes them: their list) and checks
    every value; raises ``UsageError`` naming the key."""
    positional = [arg for arg in args if "=" not in arg]
    if not positional or (len(positional) > 1 and not command.several_folders):
        what = (
            f"no {command.folder}"
            if not positional
            else f"{len(positional)} positional arguments ({' '.join(positional)})"
        )
        how_many = "one or more" if command.several_folders else "exactly one"
        raise UsageError(
            f"{command.name}: got {what}; give {how_many} {command.folder} ({command.example}). "
            f"Usage: {command.usage()}"
        )
    spec = command.arguments
    values = {key: argument.default for key, argument in spec.items()}
    for arg in args:
        if "=" not in arg:
            continue
        key, text = arg.split("=", 1)
        if key not in spec:
            raise UsageError(
                f"{command.name}: unknown argument '{key}'; it takes {', '.join(sorted(spec))}. "
                f"Usage: {command.usage()}"
            )
        try:
            value = spec[key].parse(text)
        except ValueError:
            raise UsageError(
                f"{command.name}: {key}={text!r} is not a valid value ({spec[key].help or 'see --help'})"
            ) from None
        problem = spec[key].check(value)
        if problem:
            raise UsageError(f"{command.name}: {key} {problem}")
        values[key] = value
    if command.several_folders:
        return [Path(folder).expanduser() for folder in positional], values
    return Path(positional[0]).expanduser(), values


def print_help(command: Command) -> None:
    print(f"usage: {command.usage()}")
    print(f"\n{command.description}\n")
    width = max(len(key) for key in command.arguments) + 2
    for key, argument in command.arguments.items():
        default = "null" if argument.default is None else argument.default
        print(f"  {key:<{width}} {argument.help or ''} (default: {default})")


def run_command(command: Command, args: list[str]) -> None:
    """``almond <command> ...``: help, or parse and run; a ``UsageError`` becomes one paragraph and exit code 2."""
    if any(arg in ("-h", "--help") for arg in args):
        print_help(command)
        return
    try:
        folder, values = parse_arguments(command, args)
        command.run(folder, **values)
    except UsageError as error:
        fail(str(error))
