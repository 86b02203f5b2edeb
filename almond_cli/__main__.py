"""``python -m almond_cli`` is the ``almond`` command."""

from .cli import main

main()
