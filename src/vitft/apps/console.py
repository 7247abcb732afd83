"""The ``vitft`` console command: ``vitft <command> [hydra overrides]``, from any directory.

Each command is one plain function (the main commands' root scripts, ``train.py`` ..., run the
same), composed from the configs shipped inside the package (``vitft/conf`` in a wheel; the
repo's ``conf/`` in a clone). Commands without a root script (``check-data``, ``select`` ...) run
only as ``vitft <command>`` or ``python -m vitft <command>``.
Users add their own config folders with Hydra's ``--config-dir DIR`` (``-cd``) or
``hydra.searchpath=[file:///abs/dir]``: a ``task/line7.yaml`` there is ``task=line7``.

This module imports neither torch nor transformers: ``vitft --help`` answers at once, and a
command loads only what its function imports.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitft.core.resolvers import conf_dir
from vitft.run.entry import missing_dependency, run_entry, stop

# On a shared or busy CPU, spinning OpenMP threads wait on each other for whole time slices
# (PyTorch eager at 2 threads measured 50x slower here); OMP_WAIT_POLICY=ACTIVE restores spinning.
PASSIVE_OPENMP = {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass(frozen=True)
class Command:
    config: str  # conf/<config>.yaml
    target: str  # "module:function", imported only when the command runs
    argv: str | None = None  # "module:function" turning the command's own spellings into overrides
    env: dict[str, str] = field(default_factory=dict)  # defaults set before anything loads torch
    exit_status: bool = False  # the function's return value is the process exit status


COMMANDS: dict[str, Command] = {
    "train": Command("train", "vitft.apps.train:objective"),
    "eval": Command("eval", "vitft.apps.evaluate:evaluate"),
    "predict": Command("predict", "vitft.apps.predict:predict"),
    "export": Command("export", "vitft.apps.export:export"),
    "benchmark": Command(
        "benchmark",
        "vitft.apps.benchmark:benchmark",
        argv="vitft.apps.benchmark:translate_argv",  # the seed's --model_path X spelling
        env=PASSIVE_OPENMP,
    ),
    "prune": Command("prune", "vitft.apps.prune:prune"),
    "explain": Command("explain", "vitft.apps.explain:explain"),
    "check-data": Command("check_data", "vitft.apps.check_data:check_data", exit_status=True),
    "serve": Command("serve", "vitft.deploy.serve:serve"),
    "pretrain": Command("pretrain", "vitft.apps.pretrain:pretrain"),
    "select": Command("select", "vitft.apps.select:select"),
    "add-class": Command("add_class", "vitft.apps.add_class:add_class"),
}


def available() -> dict[str, Command]:
    """The commands whose config ships with this install."""
    return {c: cmd for c, cmd in COMMANDS.items() if (conf_dir() / f"{cmd.config}.yaml").is_file()}


def resolve(target: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (imports the module)."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def load(command: str, target: str) -> Callable[..., Any]:
    """``resolve(target)`` for ``vitft <command>``: a package of the full install that this one
    lacks (a deploy-only install has no torch) stops with one line naming the fix."""
    try:
        return resolve(target)
    except ImportError as err:
        line = missing_dependency(err)
        if line is None:
            raise
        stop(f"vitft {command}: {line}")


def usage() -> str:
    cmds = "\n".join(f"  {c}" for c in available())
    return (
        "usage: vitft <command> [key=value ...] [--config-dir DIR] [--help]\n"
        f"commands:\n{cmds}\n"
        f"configs: {conf_dir()}\n"
        "`vitft <command> --help` lists a command's config groups and options."
    )


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``vitft`` console script (and of ``python -m vitft``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)
    command = commands[name]
    for key, value in command.env.items():
        os.environ.setdefault(key, value)
    if command.argv:
        rest = load(name, command.argv)(rest)
    return _run_hydra(name, command, rest)


def _run_hydra(name: str, command: Command, rest: list[str]) -> Any:
    import hydra

    fn = load(name, command.target)
    sys.argv = [f"vitft {name}", *rest]  # Hydra reads its flags and overrides from sys.argv

    def _main(cfg: Any) -> Any:
        result = run_entry(fn, cfg)
        if command.exit_status:
            sys.exit(result)
        return result

    # Hydra names the job (and its log file, train.log ...) after the task function's module.
    _main.__module__ = command.config
    config_path = str(conf_dir())
    return hydra.main(version_base="1.3", config_path=config_path, config_name=command.config)(
        _main
    )()
