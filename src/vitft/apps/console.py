"""The ``vitft`` console command: ``vitft <command> [hydra overrides]``, from any directory.

Each command is the same plain function as its root script (``train.py`` ...), composed from the
configs shipped inside the package (``vitft/conf`` in a wheel; the repo's ``conf/`` in a clone).
Users add their own config folders with Hydra's ``--config-dir DIR`` (``-cd``) or
``hydra.searchpath=[file:///abs/dir]``: a ``task/line7.yaml`` there is ``task=line7``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# command -> (config name in conf/, "module:function"); imported only when the command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "vitft.apps.train:objective"),
    "eval": ("eval", "vitft.apps.evaluate:evaluate"),
    "predict": ("predict", "vitft.apps.predict:predict"),
    "export": ("export", "vitft.apps.export:export"),
    "benchmark": ("benchmark", "vitft.apps.benchmark:benchmark"),
    "prune": ("prune", "vitft.apps.prune:prune"),
    "explain": ("explain", "vitft.apps.explain:explain"),
    "check-data": ("check_data", "vitft.apps.check_data:check_data"),
    "serve": ("serve", "vitft.deploy.serve:serve"),
    "pretrain": ("pretrain", "vitft.apps.pretrain:pretrain"),
    "select": ("select", "vitft.apps.select:select"),
    "add-class": ("add_class", "vitft.apps.add_class:add_class"),
}
# Commands whose function returns the process exit status.
EXIT_STATUS = {"check-data"}


def conf_dir() -> Path:
    """The shipped configs: ``vitft/conf`` inside an installed wheel, else the clone's conf/."""
    packaged = Path(__file__).resolve().parents[1] / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "conf"


def available() -> dict[str, tuple[str, str]]:
    """The commands whose config ships with this install."""
    return {c: spec for c, spec in COMMANDS.items() if (conf_dir() / f"{spec[0]}.yaml").is_file()}


def _resolve(target: str) -> Callable[[Any], Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    cmds = "\n".join(f"  {c}" for c in available())
    return (
        "usage: vitft <command> [key=value ...] [--config-dir DIR] [--help]\n"
        f"commands:\n{cmds}\n"
        f"configs: {conf_dir()}\n"
        "`vitft <command> --help` lists a command's config groups and options."
    )


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``vitft`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    cmd, rest = argv[0], argv[1:]
    if cmd not in commands:
        print(f"error: unknown command {cmd!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)

    import hydra
    from omegaconf import DictConfig

    import vitft  # noqa: F401  (registers the config resolvers)
    from vitft.run.entry import run_entry

    config_name, target = commands[cmd]
    if cmd == "benchmark":
        import os

        # As in benchmark.py: set before torch loads OpenMP (spinning threads on a busy CPU).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from vitft.apps.benchmark import translate_argv

        rest = translate_argv(rest)
    fn = _resolve(target)
    sys.argv = [f"vitft {cmd}", *rest]  # Hydra reads its flags and overrides from sys.argv

    def _main(cfg: DictConfig) -> Any:
        result = run_entry(fn, cfg)
        if cmd in EXIT_STATUS:
            sys.exit(result)
        return result

    # Hydra names the job (and its log file, train.log ...) after the task function's module.
    _main.__module__ = config_name
    return hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)(
        _main
    )()
