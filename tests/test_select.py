"""Active learning: select's strategies, their determinism, the ranked CSV and copies."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from tests.conftest import CONF, ROOT, TINY_VIT_CONFIG, make_dataset
from vitft.apps.select import select
from vitft.core.errors import VitftError
from vitft.modelio.hf import save_hf
from vitft.models.acquisition import (
    STRATEGIES,
    acquire,
    entropy,
    gradient_embeddings,
    k_center_greedy,
    margin,
)
from vitft.models.classifier import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "linear"}, ["b", "g", "r"])
    return save_hf(model, processor, tmp_path_factory.mktemp("sel") / "model")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """12 distinct images plus 3 exact copies of the first one."""
    root = make_dataset(tmp_path_factory.mktemp("pool_src"), counts={"train": 4}, seed=5)
    pool = tmp_path_factory.mktemp("pool")
    files = sorted((root / "train").rglob("*.png"))
    for f in files:
        shutil.copy2(f, pool / f.name)
    for i in range(3):
        shutil.copy2(files[0], pool / f"dup_{i}_{files[0].name}")
    return pool


def sel_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("select", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.output = str(tmp_path / "selection.csv")
    return cfg


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_is_deterministic_and_writes_a_ranked_csv(
    strategy, model_dir, pool, tmp_path
):
    args = [f"model_dir={model_dir}", f"pool={pool}", "budget=5", f"strategy={strategy}"]
    first = select(sel_cfg(tmp_path / "a", *args))
    second = select(sel_cfg(tmp_path / "b", *args))
    assert [r["path"] for r in first] == [r["path"] for r in second]
    rows = list(csv.DictReader((tmp_path / "a" / "selection.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["path"] for r in rows}) == 5 and all(r["reason"] for r in rows)
    assert all(float(r["score"]) >= 0 for r in rows)
    if strategy in ("margin", "entropy"):  # ranked by score, best first
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)


def test_copy_to_copies_the_picks_in_rank_order(model_dir, pool, tmp_path):
    args = [f"model_dir={model_dir}", f"pool={pool}", "budget=3", f"copy_to={tmp_path / 'lbl'}"]
    rows = select(sel_cfg(tmp_path, *args))
    copied = sorted(p.name for p in (tmp_path / "lbl").iterdir())
    assert copied == [f"{r['rank']:04d}_{r['path'].rsplit('/', 1)[1]}" for r in rows]


def test_label_studio_export_pre_annotates_each_pick(model_dir, pool, tmp_path):
    args = [f"model_dir={model_dir}", f"pool={pool}", "budget=4", "export=label_studio"]
    rows = select(sel_cfg(tmp_path, *args))
    tasks = json.loads((tmp_path / "label_studio_tasks.json").read_text())
    assert [t["data"]["path"] for t in tasks] == [r["path"] for r in rows]
    for t, r in zip(tasks, rows, strict=True):
        name = r["path"].rsplit("/", 1)[1]
        assert t["data"]["image"] == f"/data/local-files/?d={name}"  # relative to the pool
        (pred,) = t["predictions"]
        assert 1 / 3 <= pred["score"] <= 1 and pred["model_version"] == "model"
        (res,) = pred["result"]
        assert (res["from_name"], res["to_name"], res["type"]) == ("choice", "image", "choices")
        assert len(res["value"]["choices"]) == 1 and res["value"]["choices"][0] in "bgr"
    view = ET.parse(tmp_path / "label_config.xml").getroot()
    assert [c.get("value") for c in view.iter("Choice")] == ["b", "g", "r"]
    assert view.find("Choices").get("choice") == "single-radio"
    with pytest.raises(VitftError, match="export='cvat' is unknown"):
        select(sel_cfg(tmp_path, f"model_dir={model_dir}", f"pool={pool}", "export=cvat"))


def test_coreset_never_picks_a_near_duplicate(model_dir, pool, tmp_path):
    args = [f"model_dir={model_dir}", f"pool={pool}", "budget=12", "strategy=coreset"]
    rows = select(sel_cfg(tmp_path, *args))
    original = sorted(p.name for p in pool.iterdir() if not p.name.startswith("dup_"))[0]
    copies_picked = [r for r in rows if r["path"].endswith(original)]
    assert len(copies_picked) <= 1  # 12 distinct images exist: no copy of a pick is needed


def test_k_center_greedy_skips_duplicates_and_starts_from_the_labelled_set():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)
    feats = torch.cat([base, base[:1].repeat(4, 1)])  # rows 6..9 duplicate row 0
    picks, dists = k_center_greedy(feats, 6)
    assert len(set(picks)) == 6 and len({*picks} & {0, 6, 7, 8, 9}) == 1
    assert dists == sorted(dists, reverse=True)
    picks, _ = k_center_greedy(feats, 5, labelled=base[:1])  # row 0 is already labelled
    assert not {*picks} & {0, 6, 7, 8, 9}


def test_scores_and_badge_embeddings():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    assert margin(probs).argmax() == 0 and entropy(probs).argmax() == 2
    feats = torch.ones(3, 4)
    emb = gradient_embeddings(probs, feats)
    assert emb.shape == (3, 12)
    assert torch.allclose(emb[1, :4], torch.full((4,), -0.1))  # (p - 1) for the predicted class
    a, _ = acquire("badge", 2, probs, feats, seed=1)
    b, _ = acquire("badge", 2, probs, feats, seed=1)
    assert a == b and len(set(a)) == 2


def test_bad_settings_are_one_line_errors(model_dir, pool, tmp_path):
    with pytest.raises(VitftError, match="strategy='random' is unknown"):
        select(sel_cfg(tmp_path, f"model_dir={model_dir}", f"pool={pool}", "strategy=random"))
    with pytest.raises(VitftError, match="pool=.*is not a folder"):
        select(sel_cfg(tmp_path, f"model_dir={model_dir}", f"pool={tmp_path / 'none'}"))
    with pytest.raises(VitftError, match="budget=0"):
        select(sel_cfg(tmp_path, f"model_dir={model_dir}", f"pool={pool}", "budget=0"))


@pytest.mark.slow
def test_vitft_select_runs(model_dir, pool, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitft",
            "select",
            f"model_dir={model_dir}",
            f"pool={pool}",
            "budget=2",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "selection.csv").is_file()
