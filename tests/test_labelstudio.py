"""Label Studio exports read as manifests (data=manifest): JSON and JSON-MIN, single and multiple
choices, skipped and unannotated tasks listed, the policy for annotators who disagree, and the
whole round trip through a real local Label Studio server."""

from __future__ import annotations

import csv
import json
import os
import secrets
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
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from tests.conftest import CLASSES, CONF, TINY_VIT_CONFIG, make_cfg, make_dataset, make_image
from vitft.apps.select import select
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data.check import check_manifest
from vitft.data.labelstudio import read_export
from vitft.data.manifest import scan_manifest
from vitft.modelio.hf import save_hf
from vitft.models.classifier import build_model


def _ann(choices, created, cancelled=False):
    result = [
        {
            "from_name": "choice",
            "to_name": "image",
            "type": "choices",
            "value": {"choices": choices},
        }
    ]
    return {
        "result": [] if cancelled else result,
        "was_cancelled": cancelled,
        "created_at": created,
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls_images")
    rng = np.random.default_rng(0)
    for i in range(12):
        make_image(i % 3, rng).save(root / f"im{i}.png")
    return root


def _full_export(images, tmp_path):
    """Tasks 0-8 answered by one annotator; 9 skipped, 10 never annotated, 11 two vs one."""
    tasks = []
    for i in range(12):
        url = f"/data/local-files/?d=im{i}.png"
        anns = [_ann([("a", "b", "c")[i % 3]], f"2025-01-01T00:00:{i:02d}")]
        if i == 9:
            anns = [_ann([], "2025-01-01", cancelled=True)]
        elif i == 10:
            anns = []
        elif i == 11:
            anns = [_ann(["b"], "2025-01-02"), _ann(["c"], "2025-01-03"), _ann(["c"], "2025-01-04")]
        tasks.append({"id": 100 + i, "data": {"image": url}, "annotations": anns})
    out = tmp_path / "export.json"
    out.write_text(json.dumps(tasks))
    return out


def test_json_export_lists_skipped_and_unannotated_tasks(images, tmp_path):
    export = _full_export(images, tmp_path)
    splits = scan_manifest(export, image_root=images, output_dir=tmp_path / "run")
    assert splits.classes == ["a", "b", "c"] and not splits.multilabel
    used = {p.name: splits.classes[y] for s in ("train", "val", "test") for p, y in splits.split(s)}
    assert len(used) == 10 and used["im11.png"] == "c"  # majority: two of three said c
    assert used["im4.png"] == "b" and "im9.png" not in used and "im10.png" not in used
    left = json.loads((tmp_path / "run" / "skipped_rows.json").read_text())["left_out"]
    assert [(r["kind"], r["detail"]) for r in left] == [
        ("skipped_task", "task 109: skipped by the annotator"),
        ("unlabelled_task", "task 110: not annotated"),
    ]
    report = check_manifest(export, image_root=images)
    assert {w["kind"] for w in report.warnings} >= {"skipped_task", "unlabelled_task"}


@pytest.mark.parametrize(("policy", "label"), [("majority", "c"), ("first", "b"), ("drop", None)])
def test_annotators_who_disagree_follow_the_policy(images, tmp_path, policy, label):
    records, left_out = read_export(_full_export(images, tmp_path), policy, images)
    got = {r["path"].rsplit("/", 1)[1]: r["label"] for _, r in records}
    assert got.get("im11.png") == label
    if label is None:
        assert left_out[-1]["kind"] == "annotators_disagree"
        assert "['c'] x2, ['b'] x1" in left_out[-1]["detail"]


def test_a_tie_is_left_out_and_bad_policies_are_named(images, tmp_path):
    tasks = [{"id": 1, "data": {"path": str(images / "im0.png")}, "annotations": [
        _ann(["a"], "1"), _ann(["b"], "2")]}]  # fmt: skip
    (tmp_path / "tie.json").write_text(json.dumps(tasks))
    records, left_out = read_export(tmp_path / "tie.json")
    assert not records and "no majority" in left_out[0]["detail"]
    with pytest.raises(VitftError, match="data.annotators='vote' is unknown"):
        read_export(tmp_path / "tie.json", "vote")
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(VitftError, match="expected a Label Studio export"):
        read_export(tmp_path / "bad.json")


def test_json_min_single_and_multiple_choices(images, tmp_path):
    single = [
        {"image": f"/data/local-files/?d=im{i}.png", "id": i, "choice": "ab"[i % 2],
         "annotator": 1, "annotation_id": i, "created_at": "x", "updated_at": "x", "lead_time": 1}
        for i in range(8)
    ]  # fmt: skip
    single.append({"image": "/data/local-files/?d=im8.png", "id": 8, "annotation_id": None})
    (tmp_path / "min.json").write_text(json.dumps(single))
    records, left_out = read_export(tmp_path / "min.json", image_root=images)
    assert [r["label"] for _, r in records] == ["a", "b"] * 4
    assert [(x["kind"], x["detail"]) for x in left_out] == [
        ("unlabelled_task", "task 8: not annotated")
    ]
    multi = [
        {"image": f"/data/local-files/?d=im{i}.png", "id": i, "defects": {"choices": ["a", "b"]}
         if i % 2 else "a", "annotator": 1, "annotation_id": i}
        for i in range(6)
    ]  # fmt: skip
    (tmp_path / "multi.json").write_text(json.dumps(multi))
    splits = scan_manifest(tmp_path / "multi.json", image_root=images)
    assert splits.multilabel and splits.classes == ["a", "b"]
    labels = {p.name: y for s in ("train", "val", "test") for p, y in splits.split(s)}
    assert labels["im1.png"] == (1, 1) and labels["im0.png"] == (1, 0)


def test_urls_that_are_not_local_files_are_named(tmp_path):
    tasks = [
        {"id": 1, "data": {"image": "https://example.com/a.png"}, "annotations": [_ann(["a"], "1")]}
    ]
    (tmp_path / "web.json").write_text(json.dumps(tasks))
    report = check_manifest(tmp_path / "web.json")
    assert "not a local file: https://example.com/a.png" in " ".join(
        b["detail"] for b in report.bad
    ) + " ".join(report.errors)


# The real round trip: a Label Studio server of its own venv (label-studio pins Django and more
# than vitft should carry), cached per version, so only the first run pays for the install.
LS_VERSION = "1.23.2"
LS_VENV = Path.home() / ".cache" / "vitft-test-venvs" / f"label-studio-{LS_VERSION}"
# label-studio 1.23 calls sentry_sdk.init with an option sentry-sdk 3 removed.
LS_PINS = [f"label-studio=={LS_VERSION}", "sentry-sdk<3"]

# Runs in the Label Studio venv: the SDK (installed with label-studio) does what a person does.
CLIENT = """
import json, sys
from label_studio_sdk import LabelStudio
url, token, tasks_file, config_file, plan_file, out = sys.argv[1:7]
ls = LabelStudio(base_url=url, api_key=token)
project = ls.projects.create(title="vitft round trip", label_config=open(config_file).read())
ls.projects.import_tasks(id=project.id, request=json.load(open(tasks_file)))
plan = json.load(open(plan_file))
for task in ls.tasks.list(project=project.id):
    assert task.predictions and task.predictions[0].score, "the pre-annotation did not arrive"
    for answer in plan[task.data["path"]]:
        if answer == "skip":
            ls.annotations.create(id=task.id, result=[], was_cancelled=True)
        else:
            value = {"choices": [answer]}
            result = [dict(from_name="choice", to_name="image", type="choices", value=value)]
            ls.annotations.create(id=task.id, result=result, lead_time=1.5)
for kind in ("JSON", "JSON_MIN"):
    parts = ls.projects.exports.download_sync(project.id, export_type=kind, download_all_tasks=True)
    open(f"{out}/{kind}.json", "wb").write(b"".join(parts))
"""


def _label_studio_venv() -> Path:
    done = LS_VENV / ".installed"
    if not done.is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LS_VENV)], check=True)
        pip = [str(LS_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *LS_PINS]
        subprocess.run(pip, check=True, timeout=1800)
        done.write_text(" ".join(LS_PINS))
    return LS_VENV


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, token, document root): a local server, SQLite in a temp dir, 127.0.0.1 only."""
    venv = _label_studio_venv()
    home = tmp_path_factory.mktemp("ls_home")
    docs = tmp_path_factory.mktemp("ls_docs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(20)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LABEL_STUDIO_BASE_DATA_DIR": str(home),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docs),
    }
    cmd = [
        str(venv / "bin" / "label-studio"),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(home),
        "--username",
        "qa@vitft.test",
        "--password",
        secrets.token_hex(8),
        "--user-token",
        token,
        "--enable-legacy-api-token",
    ]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # migrations on a busy 2-core CI machine
        while True:
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "label studio did not start in 15 minutes"
            time.sleep(2)
        yield url, token, docs
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _select_picks(docs: Path, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """select export=label_studio over a pool under Label Studio's document root: (picked
    paths, each pool image's true class)."""
    pool = docs / "pool"
    make_dataset(docs / "src", counts={"train": 5})
    pool.mkdir()
    truth = {}
    for f in sorted((docs / "src" / "train").rglob("*.png")):
        truth[str(pool / f"{f.parent.name}_{f.name}")] = f.parent.name
        shutil.copy2(f, pool / f"{f.parent.name}_{f.name}")
    torch.manual_seed(0)
    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, sorted(CLASSES))
    model_dir = save_hf(model, processor, tmp_path / "model")
    overrides = [f"model_dir={model_dir}", f"pool={pool}", "budget=15", "export=label_studio"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("select", overrides=[*overrides, f"image_root={docs}"])
    with open_dict(cfg):
        cfg.output = str(tmp_path / "sel" / "selection.csv")
    return [r["path"] for r in select(cfg)], truth


@pytest.mark.slow
def test_round_trip_through_a_real_label_studio(label_studio, tmp_path):
    """select -> import into Label Studio -> annotate through the API -> export -> train."""
    url, token, docs = label_studio
    picked, truth = _select_picks(docs, tmp_path)
    # what the annotators do: most answer once; one task skipped, one left alone, one argued over
    plan = {p: [truth[p]] for p in picked}
    plan[picked[0]] = ["skip"]
    plan[picked[1]] = []
    other = next(c for c in CLASSES if c != truth[picked[2]])
    plan[picked[2]] = [truth[picked[2]], other, truth[picked[2]]]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "export").mkdir()
    client = [
        str(LS_VENV / "bin" / "python"),
        "-c",
        CLIENT,
        url,
        token,
        str(tmp_path / "sel" / "label_studio_tasks.json"),
        str(tmp_path / "sel" / "label_config.xml"),
        str(tmp_path / "plan.json"),
        str(tmp_path / "export"),
    ]
    proc = subprocess.run(client, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    export = tmp_path / "export" / "JSON.json"
    records, left_out = read_export(export)
    got = {r["path"]: r["label"] for _, r in records}
    assert got == {p: truth[p] for p in picked[2:]}  # the argued one by majority
    assert [(x["kind"], x["path"]) for x in left_out] == [
        ("skipped_task", picked[0]), ("unlabelled_task", picked[1])
    ]  # fmt: skip
    minimal, _ = read_export(tmp_path / "export" / "JSON_MIN.json", image_root=docs)
    assert {r["path"]: r["label"] for _, r in minimal} == got

    train_cfg = make_cfg(
        tmp_path / "run",
        None,
        "task=folder",
        "data=manifest",
        f"task.data_dir={export}",
        "task.classes=null",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
    )
    metrics, _ = train(train_cfg)
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["id2label"] == {
        str(i): c for i, c in enumerate(sorted(CLASSES))
    }
    split = list(csv.DictReader((tmp_path / "run" / "split_manifest.csv").open()))
    assert {r["path"]: r["label"] for r in split} == got
    assert "test/acc" in metrics or any(k.startswith("test") for k in metrics)
