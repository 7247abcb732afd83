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
from vitft.modelio.hf import save_hf
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("page")
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


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

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
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _part(path: Path) -> Path:
    arr = np.random.default_rng(0).integers(0, 90, (96, 96, 3), dtype=np.uint8)
    arr[30:60, 20:70] = 230  # a bright scratch
    Image.fromarray(arr).save(path)
    return path


def test_drop_an_image_see_label_confidence_and_heatmap(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = _part(tmp_path / "part.png")
    driver = _driver()
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


def test_a_bad_file_among_good_ones_is_shown_as_its_own_error(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    good = _part(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:80])  # a truncated upload
    driver = _driver()
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(f"{broken}\n{good}")  # two files at once
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "1")
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#items li.item-error")]
        label = driver.find_element(By.ID, "label").text
        request_error = driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
    assert len(errors) == 1 and errors[0].startswith("broken.png: ") and "unreadable" in errors[0]
    assert any(c in label for c in LABELS), label  # the good image is still answered
    assert request_error == ""
