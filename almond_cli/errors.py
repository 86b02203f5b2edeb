"""Errors that are the user's to fix: printed as one paragraph naming the field and the fix, exit code 2."""

import sys


class UsageError(Exception):
    """Bad input (config, data file, checkpoint, command argument). The message is shown as it is."""


class ConfigError(UsageError):
    """A config value is out of range or clashes with another; ``key`` names it, the message says what to do."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def require(condition: bool, key: str, message: str) -> None:
    """Raises ``ConfigError(key, message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Prints ``message`` as one paragraph on stderr and exits with ``code`` (no traceback)."""
    paragraph = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"almond: error: {paragraph}", file=sys.stderr)
    sys.exit(code)
