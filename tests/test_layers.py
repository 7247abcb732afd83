"""The package's shape: one-way layers (import-linter), no cycle dodged by a function-level
import, files a reader can hold, and `import vitft` alone registering the vitft model type."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.conftest import ROOT, TINY_VIT_CONFIG

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
    assert "2 kept, 0 broken" in out, out[-2000:]


def test_no_function_level_vitft_imports():
    """A vitft import inside a function hides a cycle: something sits in the wrong layer."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "console.py":  # the dispatcher sets OMP_WAIT_POLICY before torch loads
            continue
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


def test_import_vitft_registers_the_model_type_in_a_fresh_interpreter(tmp_path):
    """pipeline() on a model dir with a non-linear head needs only `import vitft`."""
    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    for head in ("mlp", "cosine"):
        model, processor = build_model({"config": TINY_VIT_CONFIG}, {"name": head}, ["a", "b"])
        save_hf(model, processor, tmp_path / head)
    code = (
        "import sys, vitft\n"
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


def test_every_conf_group_leads_to_its_module():
    """A newcomer gets from conf/<group>/ to the code that builds it in two hops: its options
    have a ``_target_``, or their comments name the vitft module (which must exist)."""
    import importlib
    import re

    def importable(name: str) -> bool:
        parts = name.split(".")
        for n in range(len(parts), 1, -1):
            try:
                importlib.import_module(".".join(parts[:n]))
                return True
            except ImportError:
                continue
        return False

    unled = []
    for group in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        if group.name in ("experiment", "hydra", "hparams_search", "paths"):
            continue  # recipes and Hydra's own settings, not built by vitft
        text = "".join(f.read_text() for f in group.glob("*.yaml"))
        named = re.findall(r"\bvitft(?:\.[a-z_]+)+", text)
        if "_target_:" not in text and not any(importable(n) for n in named):
            unled.append(group.name)
    assert not unled, unled
