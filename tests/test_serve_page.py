"""The page at / in a real headless browser (Debian's chromium, driven by selenium).

Installs chromium + chromium-driver with apt when missing (CI runs as root); selenium comes with
the dev extra. Nothing is downloaded from anywhere else (SE_OFFLINE keeps selenium's manager
from fetching drivers).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_VIT_CONFIG
from vitft.export.hf import save_hf
from vitft.models.classifier import build_model

pytestmark = pytest.mark.slow
LABELS = ["normal", "crack", "dent"]
SCREENSHOT = os.environ.get("VITFT_PAGE_SCREENSHOT")  # keep the screenshot at this path


def _browser() -> tuple[str, str]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            check=True,
            timeout=1200,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return shutil.which("chromium"), shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    torch.manual_seed(0)
    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, LABELS)
    model_dir = save_hf(model, processor, tmp_path / "model")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vitft",
            "serve",
            f"model_dir={model_dir}",
            f"port={port}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "threshold=0.2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(url + "ready", timeout=1).status == 200:
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"vitft serve exited:\n{proc.stdout.read()}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_drop_an_image_see_label_confidence_and_heatmap(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = _browser()
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=900,700",
    ):
        options.add_argument(arg)
    image = tmp_path / "part.png"
    arr = np.random.default_rng(0).integers(0, 90, (96, 96, 3), dtype=np.uint8)
    arr[30:60, 20:70] = 230  # a bright scratch
    Image.fromarray(arr).save(image)

    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(image))  # as a drop or a click would
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "1")
        label = driver.find_element(By.ID, "label").text
        confidence = driver.find_element(By.ID, "confidence").text
        heatmap = driver.find_element(By.ID, "heatmap")
        bars = driver.find_elements(By.CSS_SELECTOR, "#probs .bar")
        shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        loaded = driver.execute_script("return arguments[0].naturalWidth", heatmap)
        shown = heatmap.is_displayed()
    finally:
        driver.quit()
    assert any(c in label for c in LABELS), label
    assert confidence.startswith("confidence ") and confidence.endswith("%")
    assert len(bars) == len(LABELS)
    assert shown and loaded > 0  # the heatmap PNG decoded and is on the page
    assert Image.open(shot).size[0] > 0
