"""The Python API: each ``vitft <command>`` as a function, over the very config the CLI composes.

``vitft.train("experiment=quickstart", run_name="line3")`` is ``vitft train
experiment=quickstart run_name=line3``: overrides come as Hydra strings, as keywords
(``trainer__max_epochs=1`` is ``trainer.max_epochs=1``), or both. The run dir is the one the CLI
would use (``outputs/<run_name>``, or ``paths.output_dir=...``). A user error raises
``vitft.core.errors.VitftError`` instead of exiting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from vitft.apps.console import COMMANDS, resolve
from vitft.core.resolvers import conf_dir
from vitft.run.entry import close_trackers

_PLAIN = re.compile(r"^[\w./:~+@-]*$")  # values Hydra's override grammar takes unquoted


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if _PLAIN.match(text) else "'" + text.replace("'", "\\'") + "'"


def overrides_of(args: tuple[str, ...], options: dict[str, Any]) -> list[str]:
    """Hydra overrides from strings (``"task=folder"``) and keywords (``task__data_dir=...``)."""
    return [*args, *(f"{k.replace('__', '.')}={_value(v)}" for k, v in options.items())]


def compose(command: str, *overrides: str, **options: Any) -> DictConfig:
    """The config ``vitft <command> <overrides>`` runs with, its run dir in ``paths.output_dir``
    (where Hydra would put it; an explicit ``paths.output_dir=`` wins)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of {sorted(COMMANDS)}")
    args = overrides_of(overrides, options)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name=command):
        cfg = hydra_compose(COMMANDS[command].config, overrides=args, return_hydra_config=True)
    explicit = any(a.lstrip("+").startswith("paths.output_dir=") for a in args)
    with open_dict(cfg):
        if "paths" in cfg and not explicit:
            cfg.paths.output_dir = str(Path(cfg.hydra.run.dir))
        del cfg["hydra"]
    return cfg


def run(command: str, *overrides: str, fn: str | None = None, **options: Any) -> Any:
    """Compose ``command``'s config and call its function (or ``fn``, "module:function") on it,
    as the CLI does; returns (config, result)."""
    cfg = compose(command, *overrides, **options)
    if OmegaConf.select(cfg, "paths.output_dir"):
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        return cfg, resolve(fn or COMMANDS[command].target)(cfg)
    finally:
        close_trackers()


@dataclass
class TrainResult:
    """What ``vitft.train`` returns: the run dir, its validation/test metrics and summary.json."""

    run_dir: Path
    metrics: dict[str, float]
    summary: dict[str, Any] = field(repr=False)

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"


def train(*overrides: str, **options: Any) -> TrainResult:
    """``vitft train ...``: train, test and save ``<run>/model``."""
    cfg, (metrics, objects) = run("train", *overrides, fn="vitft.apps.train:train", **options)
    return TrainResult(Path(cfg.paths.output_dir), metrics, objects["summary"])


def evaluate(*overrides: str, **options: Any) -> Any:
    """``vitft eval ...`` (``model_dir=`` a model dir or an export folder): the metrics."""
    return run("eval", *overrides, **options)[1]


def export(*overrides: str, **options: Any) -> dict[str, dict]:
    """``vitft export ...``: each format's folder and parity, by format."""
    return run("export", *overrides, **options)[1]


def predict(*overrides: str, **options: Any) -> Any:
    """``vitft predict ...``: the predictions (also written to ``output``)."""
    return run("predict", *overrides, **options)[1]


def load(model_dir: str | Path, device: str | None = "cpu", **options: Any) -> Any:
    """A ``vitft.Predictor`` over a model dir or an export folder (``Predictor.from_path``)."""
    return resolve("vitft.deploy.predictor:Predictor").from_path(
        model_dir, device=device, **options
    )
