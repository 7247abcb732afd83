"""Sweeps and cluster configs: what can run here runs (an Optuna sweep of 2 trials)."""

import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONF
from tests.test_cli import run_script


def test_optuna_sweep_runs_two_trials(tmp_path):
    proc = run_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "experiment=quickstart",
        "debug=fdr",
        "data.num_workers=0",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result["name"] == "optuna"
    assert 0.0 <= result["best_value"] <= 1.0
    assert set(result["best_params"]) == {"optimizer.lr", "head", "freeze.n", "data.augment"}
    assert (tmp_path / "0" / "summary.json").is_file() and (
        tmp_path / "1" / "summary.json"
    ).is_file()


def test_slurm_launcher_and_multinode_trainer_compose():
    from hydra.utils import get_class

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "hydra/launcher=submitit_slurm",
                "trainer=ddp_multinode",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    cls = get_class(launcher._target_)  # the plugin imports
    assert cls.__name__ == "SlurmLauncher"
    assert launcher.nodes == cfg.trainer.num_nodes == 2
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 4
    assert launcher.max_num_timeout > 0 and launcher.partition == "gpu"
    assert cfg.trainer.strategy == "ddp"
