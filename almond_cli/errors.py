"""Errors that are the user's to fix: printed as one paragraph naming the field and the fix, exit code 2."""

import sys


class UsageError(Exception):
    """Bad input (config, data file, checkpoint, command argument). The message is shown as it is."""


EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Prints ``message`` as one paragraph on stderr and exits with ``code`` (no traceback)."""
    paragraph = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"almond: error: {paragraph}", file=sys.stderr)
    sys.exit(code)
