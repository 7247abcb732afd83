"""Check that a fresh vitft export loads in TensorFlow and Flax (transformers 4.x, from_pt).

transformers 5 removed the TF and Flax model classes; teams on those stacks run transformers 4.x.
This builds a separate venv with transformers 4.57.6, tensorflow-cpu, tf-keras and flax that also
sees this interpreter's packages (torch, which from_pt needs), saves a fresh export with the current
vitft, loads it there in TF and Flax and compares their logits with PyTorch's. Works from the
system interpreter and from a venv alike.

    python scripts/compat_tf_flax.py [--venv .venv-compat] [--tol 1e-4]

Prints one JSON line with the venv build time and max abs logit differences; exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PACKAGES = ["transformers==4.57.6", "tensorflow-cpu", "tf-keras", "flax"]

CHILD = """
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, transformers
from transformers import FlaxViTForImageClassification, TFViTForImageClassification
model_dir, data = sys.argv[1], np.load(sys.argv[2])
x, ref = data["x"], data["logits"]
tf_logits = TFViTForImageClassification.from_pretrained(model_dir, from_pt=True)(
    pixel_values=x).logits.numpy()
flax_logits = np.asarray(FlaxViTForImageClassification.from_pretrained(
    model_dir, from_pt=True)(pixel_values=x).logits)
print(json.dumps({
    "transformers": transformers.__version__,
    "tf_max_abs_diff": float(np.abs(tf_logits - ref).max()),
    "flax_max_abs_diff": float(np.abs(flax_logits - ref).max()),
    "tf_top1_agree": bool((tf_logits.argmax(-1) == ref.argmax(-1)).all()),
    "flax_top1_agree": bool((flax_logits.argmax(-1) == ref.argmax(-1)).all()),
}))
"""


def see_our_packages(python: Path) -> None:
    """Let the venv of ``python`` import this interpreter's packages, after its own.

    ``--system-site-packages`` alone is not enough: from a venv, ``python -m venv`` links the new
    venv to the *base* interpreter, whose site-packages lack torch when vitft lives in a venv.
    A .pth file in the new venv appends our site-packages to its path (its own come first, so
    its transformers 4.x shadows our 5.x).
    """
    ours = [*site.getsitepackages(), site.getusersitepackages()]
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "vitft_parent.pth").write_text("\n".join(ours) + "\n")


def build_venv(venv: Path) -> float:
    """Create ``venv`` with PACKAGES unless it has them already; returns seconds spent."""
    start = time.perf_counter()
    python = venv / "bin" / "python"
    if not python.is_file():
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
    see_our_packages(python)
    probe = (
        "import torch, transformers, tensorflow, tf_keras, flax; "
        "assert transformers.__version__ == '4.57.6'"
    )
    if subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return time.perf_counter() - start


def fresh_export(out: Path) -> Path:
    """A small linear-head ViT saved by vitft's save_hf, plus PyTorch logits on random inputs."""
    from vitft.modelio.hf import save_hf
    from vitft.models.classifier import build_model

    torch.manual_seed(0)
    config = {
        "model_type": "vit",
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }
    model, processor = build_model({"config": config}, {"name": "linear"}, ["ok", "defect"])
    model_dir = save_hf(model.eval(), processor, out / "model")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x).numpy()
    np.savez(out / "ref.npz", x=x.numpy(), logits=logits)
    return model_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(".venv-compat"))
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    seconds = build_venv(args.venv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = fresh_export(Path(tmp))
        start = time.perf_counter()
        out = subprocess.run(
            [str(args.venv / "bin" / "python"), "-c", CHILD, str(model_dir), f"{tmp}/ref.npz"],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(venv_build_s=round(seconds, 1), check_s=round(time.perf_counter() - start, 1))
    ok = (
        result["tf_max_abs_diff"] <= args.tol
        and result["flax_max_abs_diff"] <= args.tol
        and result["tf_top1_agree"]
        and result["flax_top1_agree"]
    )
    result["passed"] = ok
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
