"""vitft from Python, notebook style: train, evaluate, export and predict on the shipped sample
data (data/defect), offline, on a CPU.

    python examples/python_api.py [--epochs 60] [--out outputs/python_api]

Each call composes the same Hydra config as the CLI: ``vitft.train(experiment="quickstart")`` is
``vitft train experiment=quickstart``; ``trainer__max_epochs=2`` is ``trainer.max_epochs=2``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import vitft

ROOT = Path(__file__).resolve().parents[1]


def main(epochs: int, out: Path) -> dict:
    # 1. Train: the quickstart recipe (the shipped vit_fractal backbone) on data/defect.
    run = vitft.train(
        experiment="quickstart",
        trainer__max_epochs=epochs,
        data__num_workers=0,
        paths__output_dir=out / "run",
    )
    print("trained:", run.model_dir, {k: round(v, 3) for k, v in run.metrics.items()})

    # 2. Evaluate the model on its run's own test split (metrics, figures, report.html).
    metrics = vitft.evaluate(
        model_dir=run.model_dir, explain__per_class=0, paths__output_dir=out / "eval"
    )
    print("test accuracy:", round(metrics["accuracy"], 3))

    # 3. Export to ONNX (with its parity check), then predict as a deployed line would.
    vitft.export(model_dir=run.model_dir, formats=["onnx"])
    predictor = vitft.load(run.run_dir / "export" / "onnx")
    results = predictor.predict_files(str(ROOT / "data" / "defect" / "test" / "crack"))
    labels = [p.label for p in results.predictions]
    print(f"{len(labels)} test cracks predicted, {labels.count('crack')} as crack")
    return {"metrics": metrics, "labels": labels}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "python_api")
    args = ap.parse_args()
    main(args.epochs, args.out)
