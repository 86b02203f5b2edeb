"""``python -m almond_cli`` is the ``almond`` command."""

from .commands.cli import main

main()
