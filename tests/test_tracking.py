import logging
import re
import socket
import time

import pytest

from tests.conftest import make_cfg
from vitft.apps.train import train
from vitft.training import tracking


@pytest.fixture(autouse=True)
def finish_wandb():
    """train() leaves its W&B run open (run() closes it); close it so tests don't share it."""
    yield
    tracking.finish()


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
    # the log names the offline run to sync, with this run's id (where wandb puts it depends on
    # earlier wandb setups in the same process, so the path itself is not asserted)
    rid = objects["summary"]["wandb_run_id"]
    assert re.search(rf"W&B run {rid} is offline; sync it later with: wandb sync \S+", text)
    assert any(type(lg).__name__ == "WandbLogger" for lg in objects["trainer"].loggers)
    assert (run / "metrics.csv").is_file()  # the CSV logger runs beside W&B


def test_wandb_unreachable_with_a_bad_key_falls_back_offline(
    tmp_path, tiny_data, monkeypatch, caplog
):
    """Online mode, a (bad) key, and the server is a closed loopback port: training continues."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    caplog.set_level(logging.INFO)
    run = tmp_path / "run"
    start = time.monotonic()
    _, objects = train(make_cfg(run, tiny_data, "logger=wandb", "logger.wandb.mode=online"))
    assert objects["trainer"].global_step > 0
    assert "W&B online failed" in caplog.text and "wandb sync" in caplog.text
    rid = objects["summary"]["wandb_run_id"]
    assert [p.name[-8:] for p in (run / "wandb").glob("offline-run-*")] == [rid]
    assert time.monotonic() - start < 120  # the outage costs seconds, not a hang
