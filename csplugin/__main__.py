"""``python -m csplugin``: the command line."""

from csplugin.app.cli import main

main()
