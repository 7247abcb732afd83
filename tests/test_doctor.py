"""Data doctor: every kind of bad file is found by name; training skips or fails on them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, make_cfg, make_dataset
from vitft.apps.train import train
from vitft.core.errors import VitftError
from vitft.data.doctor import check_dataset, inspect_file
from vitft.training.datamodule import ImageDataset

# file (relative to the root) -> the kind the doctor must report it as
EXPECTED = {
    "train/red/empty.png": "zero_byte",
    "train/red/notes.jpg": "not_an_image",
    "train/green/cut.jpg": "truncated",
    "train/green/broken.png": "corrupt",
    "train/blue/cmyk.jpg": "unusual_image",
    "train/blue/depth16.png": "unusual_image",
    "train/red/palette.png": "unusual_image",
    "train/red/alpha.png": "unusual_image",
    "train/blue/thumb.png": "unusual_image",
    "train/red/copy.png": "duplicate_in_split",
    # walked in sorted order: green/relabelled.png comes first, so the red copies are flagged
    "train/red/red_train_000.png": "duplicate_in_split",
    "test/red/leak.png": "duplicate_across_splits",
    "train/red/.DS_Store": "hidden_or_junk",
    "train/Thumbs.db": "hidden_or_junk",
    "train/__MACOSX": "hidden_or_junk",
    "train/red/readme.txt": "non_image_file",
    "val/red": "near_empty_class",
}
BAD = {k for k, v in EXPECTED.items() if v in ("zero_byte", "not_an_image", "truncated", "corrupt")}


def _jpeg_bytes(size: int = 64) -> bytes:
    import io

    arr = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def make_messy(root: Path) -> Path:
    make_dataset(root, counts={"train": 8, "val": 3, "test": 6})
    t = root / "train"
    (t / "red/empty.png").write_bytes(b"")
    (t / "red/notes.jpg").write_text("exported from the line PC\n")
    jpg = _jpeg_bytes()
    (t / "green/cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (t / "green/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    rgb = Image.fromarray(np.full((48, 48, 3), 120, np.uint8))
    rgb.convert("CMYK").save(t / "blue/cmyk.jpg")
    Image.fromarray(np.full((48, 48), 40000, np.uint16)).save(t / "blue/depth16.png")
    rgb.convert("P").save(t / "red/palette.png")
    rgb.convert("RGBA").save(t / "red/alpha.png")
    rgb.resize((8, 8)).save(t / "blue/thumb.png")
    shutil.copy(t / "red/red_train_000.png", t / "red/copy.png")
    shutil.copy(t / "red/red_train_000.png", t / "green/relabelled.png")
    shutil.copy(t / "red/red_train_001.png", root / "test/red/leak.png")
    (t / "red/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (t / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (t / "__MACOSX/red").mkdir(parents=True)
    (t / "__MACOSX/red/._red_train_000.png").write_bytes(b"\x00\x05\x16\x07")
    (t / "red/readme.txt").write_text("camera 3\n")
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    return make_messy(tmp_path_factory.mktemp("messy"))


def test_doctor_finds_every_kind_by_name(messy):
    report = check_dataset(messy, decode=True)
    found = {}
    for item in report.bad + report.warnings:
        found.setdefault(str(Path(item["path"]).relative_to(messy)), set()).add(item["kind"])
    for rel, kind in EXPECTED.items():
        assert kind in found.get(rel, set()), (rel, kind, found.get(rel))
    assert {str(Path(b["path"]).relative_to(messy)) for b in report.bad} == BAD
    conflicting = [w for w in report.warnings if "conflicting labels" in w["detail"]]
    assert sorted(Path(w["path"]).name for w in conflicting) == ["copy.png", "red_train_000.png"]
    assert all("relabelled.png" in w["detail"] for w in conflicting)
    # hidden files, junk and bad files are not counted as usable images
    assert report.counts["train"] == {"blue": 8 + 3, "green": 8 + 1, "red": 8 + 3}
    assert report.can_train("skip") and not report.can_train("fail")
    assert "bad file(s)" in report.reasons("fail")[0]


def test_header_check_finds_truncation_without_decoding(messy):
    fast = inspect_file(messy / "train/green/cut.jpg", decode=False)
    assert fast.problem == "truncated" and "end marker" in fast.detail
    assert inspect_file(messy / "train/red/red_train_000.png").problem is None


def test_check_data_cli_report_and_exit_codes(tmp_path, messy):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "vitft", "check-data", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    report = tmp_path / "report.json"
    proc = cli(f"data_dir={messy}", f"report={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "notes.jpg" in proc.stdout and "OK: training can proceed" in proc.stdout
    saved = json.loads(report.read_text())
    assert saved["can_train"] and len(saved["bad"]) == len(BAD)

    proc = cli(f"data_dir={messy}", f"report={report}", "data.on_bad_file=fail")
    assert proc.returncode == 1 and "NOT OK" in proc.stdout

    mismatch = make_dataset(tmp_path / "mismatch", counts={"train": 6, "val": 6})
    shutil.rmtree(mismatch / "val" / "blue")
    (mismatch / "val" / "Blu").mkdir()
    proc = cli(f"data_dir={mismatch}", f"report={report}")
    assert proc.returncode == 1
    assert "class-name mismatch: val/ lacks ['blue']" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_training_skip_lists_bad_files_and_fail_stops_first(tmp_path, messy):
    run = tmp_path / "skip"
    _, objects = train(make_cfg(run, messy, "debug=fdr", "data.on_bad_file=skip"))
    assert objects["trainer"].global_step > 0
    listed = json.loads((run / "bad_files.json").read_text())
    assert {str(Path(f["path"]).relative_to(messy)) for f in listed["files"]} == BAD
    assert "train/red: 2" in listed["per_class"]
    used = {
        str(p) for s in ("train", "val", "test") for p, _ in objects["datamodule"].splits.split(s)
    }
    assert not used & {str(messy / b) for b in BAD}

    run = tmp_path / "fail"
    with pytest.raises(VitftError, match="4 bad file") as err:
        train(make_cfg(run, messy, "data.on_bad_file=fail"))
    assert "notes.jpg" in str(err.value) and "data.on_bad_file=skip" in str(err.value)
    assert not (run / "checkpoints").exists()


def test_file_that_turns_bad_mid_run_is_replaced_and_recorded(tmp_path):
    root = make_dataset(tmp_path / "d", counts={"train": 3})
    samples = [(p, 0) for p in sorted((root / "train/red").iterdir())]
    log_file = tmp_path / "failures.tsv"
    ds = ImageDataset(samples, lambda img: np.asarray(img).mean(), log_file)
    samples[1][0].write_bytes(b"overwritten by a sync job")
    value, label = ds[1]
    assert label == 0 and value == pytest.approx(np.asarray(Image.open(samples[2][0])).mean())
    assert str(samples[1][0]) in log_file.read_text()


def test_ranks_above_zero_take_rank_zeros_screening(tmp_path, monkeypatch):
    """Under DDP rank 0 screens every file once; the ranks Lightning starts after it reuse its
    result from the run dir instead of reading every file again."""
    from lightning.pytorch.utilities import rank_zero_only

    from vitft.data import doctor
    from vitft.training.factory import screened_splits

    data = make_dataset(tmp_path / "data")
    bad = sorted((data / "train").rglob("*.png"))[0]
    bad.write_bytes(b"not an image")
    out = tmp_path / "run"
    out.mkdir()
    cfg = make_cfg(out, data)
    first = screened_splits(cfg.data, cfg.task.get("multilabel"), out)
    assert bad not in [p for p, _ in first.train]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setattr(doctor, "screen", lambda *a, **k: pytest.fail("rank 1 screened again"))
    second = screened_splits(cfg.data, cfg.task.get("multilabel"), out)
    assert (second.train, second.val, second.test) == (first.train, first.val, first.test)
