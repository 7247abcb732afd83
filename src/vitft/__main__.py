"""``python -m vitft <command> ...``: the same as the ``vitft`` console command."""

from vitft.apps.console import main

if __name__ == "__main__":  # multiprocessing (spawn, forkserver) imports this module again
    main()
