"""The package's shape: one-way layers (import-linter), no cycle dodged by a function-level
import, files a reader can hold, and commands that load only what they use."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.conftest import CLASSES, ROOT, TINY_VIT_CONFIG

SRC = ROOT / "src" / "vitft"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_import_linter_contracts_hold():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "3 kept, 0 broken" in out, out[-2000:]


def test_no_function_level_vitft_imports():
    """A vitft import inside a function hides a cycle: something sits in the wrong layer."""
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            optional = {  # imports of an optional extra, guarded by try/except ImportError
                id(n)
                for t in ast.walk(fn)
                if isinstance(t, ast.Try)
                and any("Error" in ast.unparse(h.type or ast.Name("")) for h in t.handlers)
                for n in ast.walk(t)
            }
            for node in ast.walk(fn):
                if id(node) in optional:
                    continue
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                if any(n == "vitft" or n.startswith("vitft.") for n in names):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found


def test_no_source_file_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, long


def test_no_function_over_60_lines():
    """A function a reader can hold: docstring included, none in src/vitft over 60 lines."""
    long = {
        f"{p.relative_to(ROOT)}:{fn.lineno} {fn.name}": n
        for p in SRC.rglob("*.py")
        for fn in ast.walk(ast.parse(p.read_text()))
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (n := fn.end_lineno - fn.lineno + 1) > 60
    }
    assert not long, long


def test_register_hf_lets_pipeline_load_every_head_in_a_fresh_interpreter(tmp_path):
    """pipeline() on a model dir with a non-linear head needs only `vitft.register_hf()`."""
    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    for head in ("mlp", "cosine"):
        model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": head}, ["a", "b"])
        save_hf(model, processor, tmp_path / head)
    code = (
        "import sys, vitft\n"
        "vitft.register_hf()\n"
        "from transformers import pipeline\n"
        "from PIL import Image\n"
        "for head in ('mlp', 'cosine'):\n"
        "    pipe = pipeline('image-classification', model=sys.argv[1] + '/' + head)\n"
        "    out = pipe(Image.new('RGB', (40, 40), 'red'))\n"
        "    print(head, type(pipe.model).__name__, sorted(o['label'] for o in out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "mlp VitftForImageClassification ['a', 'b']",
        "cosine VitftForImageClassification ['a', 'b']",
    ]


# Groups whose options build nothing themselves, and why.
NOT_BUILT = {
    "experiment": "recipes of overrides (# @package _global_)",
    "hydra": "Hydra's own settings",
    "hparams_search": "a sweeper's settings",
    "paths": "folders, read by interpolation",
    "task": "a dataset's settings, read by conf/data/ (whose _target_ builds the batches)",
    "debug": "trainer flags merged into conf/trainer/ (# @package _global_)",
}
# Groups whose options are named collections, each entry with its own _target_ ({}: none).
COLLECTIONS = ("callbacks", "logger")
# Groups whose built object sits under one key of the option.
NESTED = {"scheduler": "schedule"}


def _option(path) -> dict:
    """An option file's keys, with those of the options its ``defaults`` list names in the same
    group (conf/data/manifest.yaml extends folder.yaml)."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    merged: dict = {}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, str) and entry != "_self_":
            merged |= _option(path.parent / f"{entry}.yaml")
    return merged | raw


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for v in node.values() for t in _targets(v)]
    return [t for v in node for t in _targets(v)] if isinstance(node, list) else []


def test_every_conf_group_leads_to_its_module():
    """A newcomer gets from conf/<group>/ to the code that builds it in one hop: every option of
    every built group has a ``_target_`` (no comment naming a module stands in for one), and every
    ``_target_`` in conf/ imports."""
    from hydra.utils import get_object

    unled, broken = [], []
    for group in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        for path in sorted(group.glob("*.yaml")):
            option = _option(path)
            name = f"{group.name}/{path.name}"
            if group.name in COLLECTIONS:
                led = all(isinstance(v, dict) and "_target_" in v for v in option.values() if v)
            elif group.name in NESTED:
                led = "_target_" in (option.get(NESTED[group.name]) or {})
            else:
                led = "_target_" in option or group.name in NOT_BUILT
            if not led:
                unled.append(name)
            for target in _targets(option):
                try:
                    get_object(target)
                except Exception as err:  # any failure to import is the finding
                    broken.append(f"{name}: {target} ({err})")
    assert not unled, f"options without a _target_: {unled}"
    assert not broken, broken


def _loaded_after(code: str, *args: str) -> set[str]:
    """The top-level packages and vitft modules in sys.modules after ``code`` runs in a fresh
    interpreter (a module a test imported earlier must not hide a load)."""
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


def test_import_vitft_and_help_load_neither_torch_nor_transformers():
    loaded = _loaded_after("import vitft, vitft.apps.console as c; c.main(['--help'])")
    assert not loaded & {"torch", "transformers", "hydra", "lightning"}, loaded
    assert callable(__import__("vitft").load)  # the lazy names resolve


def test_deploy_commands_never_load_the_training_stack():
    modules = [
        "vitft.deploy.predictor",
        "vitft.deploy.serve",
        "vitft.apps.predict",
        "vitft.apps.export",
        "vitft.apps.benchmark",
        "vitft.run.entry",
        "vitft.run.rundir",
        "vitft.api",
    ]
    loaded = _loaded_after("import " + ", ".join(modules))
    assert not loaded & {"lightning", "pytorch_lightning", "wandb", "vitft.training"}, sorted(
        m for m in loaded if m.startswith(("lightning", "vitft.training", "wandb"))
    )


def test_an_onnx_predict_needs_no_transformers_model_code(tmp_path, tiny_data):
    from vitft.api import compose
    from vitft.apps.export import export
    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": "mlp"}, list(CLASSES))
    model_dir = save_hf(model, processor, tmp_path / "run" / "model")
    cfg = compose("export", model_dir=model_dir, formats=["onnx"], data_dir=tiny_data)
    export(cfg)
    image = next(tiny_data.rglob("*.png"))
    code = (
        "import sys, vitft\n"
        "p = vitft.load(sys.argv[1])\n"
        "print(p.predict_files([sys.argv[2]]).predictions[0].label)\n"
    )
    loaded = _loaded_after(code, str(tmp_path / "run" / "export" / "onnx"), str(image))
    assert loaded & set(CLASSES)  # the prediction, printed before the module names
    # An architecture's own code (transformers.models.vit.modeling_vit ...), not the Auto tables.
    arch = [m.split(".") for m in loaded if m.startswith("transformers.models.")]
    model_code = sorted(".".join(m) for m in arch if m[2] != "auto" and "modeling" in m[-1])
    assert not model_code, model_code
    assert not loaded & {"lightning", "wandb", "vitft.training"}
