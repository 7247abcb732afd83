"""Every option of every config group composes, and what it configures instantiates."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, make_cfg
from vitft.training.factory import build, build_classifier
from vitft.training.tracking import build_loggers

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
TINY_MODEL = ["model=vit_tiny"]


def test_every_group_has_options():
    assert {
        "task",
        "model",
        "head",
        "freeze",
        "data",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "paths",
        "hydra",
        "experiment",
        "debug",
    } <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(tmp_path, tiny_data, group, option):
    if group == "hydra":
        return check_hydra_run_dir()
    if group == "pretraining":
        return check_pretraining_method(tmp_path, tiny_data, option)
    overrides = [f"{group}={option}"]
    data = tiny_data
    if group == "task":
        data = None
        if option == "folder":
            overrides.append(f"task.data_dir={tiny_data}")
    cfg = make_cfg(tmp_path / "run", data, *overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    classes = ["blue", "green", "red"]

    if group == "task":
        from vitft.data.sources import scan_data

        splits = scan_data(cfg.data, cfg.task.multilabel)
        assert len(splits.train) > 0 and len(splits.val) > 0 and len(splits.test) > 0
        assert splits.multilabel is (option == "defect_multilabel")
    elif group == "model":
        if cfg.model.pretrained and Path(str(cfg.model.pretrained)).is_dir():
            # shipped weights (model=vit_fractal): loaded from the package, sha256-checked
            model, _ = build_classifier(cfg.model, cfg.head, classes)
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        elif cfg.model.pretrained:
            # The hub id is loaded by the same from_pretrained call as a local dir; that path is
            # tested in test_models.py (no network here).
            hub_id = str(cfg.model.pretrained)
            assert hub_id.count("/") == 1 and not Path(hub_id).exists()
            tiny = "vit_tiny" if option == "vit_base" else f"{option}_tiny"
            assert (CONF / "model" / f"{tiny}.yaml").is_file()  # a tiny variant for tests
        else:
            model, _ = build_classifier(cfg.model, cfg.head, classes)
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    elif group in ("head", "freeze"):
        model, _ = build_classifier(cfg.model, cfg.head, classes)
        build(cfg.freeze, "freeze", model).apply(model)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    elif group == "optimizer":
        from vitft.training.module import build_optimizer

        model, _ = build_classifier(cfg.model, cfg.head, classes)
        opt = build_optimizer(cfg.optimizer, model)
        assert isinstance(opt, torch.optim.Optimizer)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    elif group == "scheduler":
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        schedule = instantiate(cfg.scheduler.schedule)
        import inspect

        params = inspect.signature(schedule.func).parameters
        kwargs = {
            k: v
            for k, v in {"num_warmup_steps": 2, "num_training_steps": 10}.items()
            if k in params
        }
        schedule(optimizer=opt, **kwargs).step()
    elif group == "trainer":
        trainer_cfg = cfg.trainer
        if trainer_cfg.accelerator == "gpu":  # no GPU here: everything but the accelerator
            trainer_cfg.accelerator = "cpu"
        trainer = instantiate(trainer_cfg, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    elif group == "logger":
        loggers = build_loggers(cfg.get("logger"), Path(cfg.paths.output_dir), "abc12345", {})
        assert len(loggers) == {"none": 0, "wandb": 2}.get(option, 1)
        from vitft.training.tracking import finish

        finish()
    elif group == "callbacks":
        cbs = [instantiate(c) for c in cfg.callbacks.values() if c]
        # pretrain: no labels, so no best-by-val/acc checkpoint and no early stopping
        assert len(cbs) == {"none": 0, "pretrain": 5}.get(option, 7)
    elif group == "hparams_search":
        assert cfg.optimized_metric == "val/acc" and cfg.sweep_name == "optuna-folder"
    elif group == "cache":
        from vitft.training.cache import use_cache

        assert use_cache(cfg.cache, {"name": "backbone"}) is (option == "features")
    elif group == "loss":
        criterion = build(cfg.loss, "loss", None, False)
        assert criterion(torch.randn(2, 3), torch.tensor([0, 2])).isfinite()
    elif group == "distill":
        assert build(cfg.distill, "distill", classes, None) is None  # no teacher by default
    elif group in ("data", "paths", "experiment", "debug"):
        assert cfg.data.batch_size > 0


def check_hydra_run_dir():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        named = compose("train", overrides=["run_name=line3"], return_hydra_config=True)
        unnamed = compose("train", return_hydra_config=True)
    root = Path(named.paths.root_dir)
    assert (root / "conf").is_dir()
    assert Path(named.hydra.run.dir) == root / "outputs" / "line3"
    assert Path(unnamed.hydra.run.dir).parent == root / "outputs" / "runs"


def test_unknown_option_is_a_clear_hydra_error(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="freeze"):
        make_cfg(tmp_path, None, "freeze=half")


def check_pretraining_method(tmp_path, tiny_data, option: str) -> None:
    """conf/pretraining/<option>.yaml (for `vitft pretrain`) builds a method that trains a step."""
    from PIL import Image

    from tests.test_pretraining import pretrain_cfg
    from vitft.models.backbone import load_backbone

    cfg = pretrain_cfg(tmp_path, tiny_data, f"pretraining={option}")
    backbone, processor = load_backbone(cfg.model, ["image"])
    method = instantiate(cfg.pretraining, backbone=backbone, processor=processor)
    image = Image.new("RGB", (40, 40), (120, 30, 200))
    views = [torch.stack(v) for v in zip(*(method.views(image) for _ in range(2)), strict=True)]
    loss = method.loss(views, 0.0)
    loss.backward()
    method.after_step(0.0)
    assert torch.isfinite(loss) and method.encoder().config.model_type == "vit"
