"""Errors that are the user's to fix: printed as one paragraph naming the field and the fix, exit code 2."""


class UsageError(Exception):
    """Bad input (config, data file, checkpoint, command argument). The message is shown as it is."""


EXIT_USAGE = 2
