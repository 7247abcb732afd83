"""The OOD scorer's features: multi-scale maxima of every backbone family, symmetric views, and
ScoredClassifier (logits + score in one graph, what predict and the exports run)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import CONF
from vitft.core.errors import VitftError
from vitft.modelio.ood import OOD_JSON, load_ood, save_ood
from vitft.models.classifier import build_model
from vitft.models.ood import (
    OOD_DEPTHS,
    OODScorer,
    ScoredClassifier,
    image_views,
    multiscale_features,
    view_features,
    views_for,
)


def _tiny(name: str):
    torch.manual_seed(0)
    cfg = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    net, processor = build_model(cfg, {"name": "linear"}, ["a", "b", "c"])
    size = processor.size.get("height") or processor.size.get("shortest_edge")
    return net.eval(), int(size)


@pytest.mark.parametrize(
    "name", ["vit_tiny", "deit_tiny", "dinov2_tiny", "mobilevit_tiny", "convnext_tiny", "swin_tiny"]
)
def test_every_backbone_gives_multiscale_features_and_a_scored_graph(name):
    net, size = _tiny(name)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        feats, pooled = multiscale_features(net, x)
        pooled_dim = net.features(x).shape[1]
        # pooled + up to OOD_DEPTHS maxima, each part of unit norm
        parts = round(float((feats**2).sum(1)[0]))
        assert 2 <= parts <= 1 + OOD_DEPTHS and torch.allclose(pooled, net.features(x), atol=1e-5)
        assert feats.shape[1] > pooled_dim
        train = view_features(net, torch.randn(12, 3, size, size), "flip")
        scorer = OODScorer.fit("mahalanobis", train, torch.arange(12) % 3, views="flip")
        logits, scores = ScoredClassifier(net, scorer)(x)
    assert torch.allclose(logits, net(x), atol=1e-5)  # the image as given decides the class
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert torch.allclose(scores, scorer.score(view_features(net, x, "flip")), atol=1e-4)


def test_d4_views_are_the_eight_symmetries_with_the_image_first():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    v = image_views(x, "d4").reshape(8, 2, 3, 4, 4)
    assert torch.equal(v[0], x)
    expected = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(2, 3))
        expected += [r, r.flip(3)]
    got = {tuple(t.flatten().tolist()) for t in v}
    assert got == {tuple(t.flatten().tolist()) for t in expected} and len(got) == 8
    assert image_views(x, "none") is x and image_views(x, "flip").shape[0] == 4
    with pytest.raises(VitftError, match="ood.views=d4 needs square images"):
        image_views(torch.zeros(1, 3, 4, 6), "d4")


def test_a_d4_score_does_not_change_when_the_image_is_rotated():
    """The views form a group: rotating the image permutes them, so the averaged features and
    the score stay the same (a crack's direction is not novelty)."""
    net, size = _tiny("mobilevit_tiny")
    with torch.no_grad():
        train = view_features(net, torch.randn(9, 3, size, size), "d4")
        scorer = OODScorer.fit("mahalanobis", train, torch.arange(9) % 3, views="d4")
        x = torch.randn(2, 3, size, size)
        _, s = ScoredClassifier(net, scorer)(x)
        _, s_rot = ScoredClassifier(net, scorer)(torch.rot90(x, 1, dims=(2, 3)))
    assert torch.allclose(s, s_rot, rtol=1e-3, atol=1e-3)


def test_views_follow_the_training_augmentation():
    assert views_for("auto", "industrial") == "d4"
    assert views_for("auto", "light") == "flip"
    assert views_for("auto", None) == "none"
    assert views_for("flip", "industrial") == "flip"
    with pytest.raises(VitftError, match="ood.views='d8' is unknown"):
        views_for("d8", None)


def test_views_round_trip_and_an_older_scorer_is_a_clear_error(tmp_path):
    feats = torch.randn(10, 2, 6)
    scorer = OODScorer.fit("knn", feats, torch.zeros(10), k=3, views="flip").calibrate(feats, 0.9)
    save_ood(scorer, tmp_path)
    again = load_ood(tmp_path)
    assert again.views == "flip" and torch.allclose(again.score(feats), scorer.score(feats))
    doc = json.loads((tmp_path / OOD_JSON).read_text())
    del doc["views"]
    (tmp_path / OOD_JSON).write_text(json.dumps(doc))
    with pytest.raises(VitftError, match="fitted by an older vitft"):
        load_ood(tmp_path)
