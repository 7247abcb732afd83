import logging

from tests.conftest import make_cfg
from vitft.train import train


def test_wandb_without_key_records_offline_and_says_how_to_sync(
    tmp_path, tiny_data, monkeypatch, caplog
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    _, objects = train(
        make_cfg(
            run, tiny_data, "logger=wandb", "trainer.max_epochs=1", "run_name=line3", "tags=[t1]"
        )
    )
    text = caplog.text
    assert "no API key" in text and "wandb sync" in text
    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    rid = objects["summary"]["wandb_run_id"]
    assert offline_runs[0].name.endswith(rid)
    assert (run / "metrics.csv").is_file()  # the CSV logger runs beside W&B
