"""``python -m vitft <command> ...``: the same as the ``vitft`` console command."""

from vitft.apps.console import main

main()
