"""vitft: fine-tuning Vision Transformers for industrial transfer learning.

The Python face, the same commands as the ``vitft`` CLI::

    import vitft

    run = vitft.train(experiment="quickstart", run_name="line3")   # composes conf/train.yaml
    metrics = vitft.evaluate(model_dir=run.model_dir)
    exports = vitft.export(model_dir=run.model_dir, formats=["onnx"])
    predictor = vitft.load(run.model_dir)          # a model dir or an export folder
    predictor.predict_files("data/defect/test")

Every name is imported on first use (PEP 562), so ``import vitft`` loads neither torch nor
transformers. ``vitft.register_hf()`` registers vitft's model type with transformers' Auto
classes (``pipeline("image-classification", model=<run>/model)`` for the mlp and cosine heads);
``vitft.load`` and every command that loads a model dir do it themselves.
"""

from omegaconf import OmegaConf

from vitft._version import __version__
from vitft.core import resolvers
from vitft.core.lazy import attach
from vitft.weights import weights_dir

__all__ = [
    "Predictor",
    "__version__",
    "compose",
    "evaluate",
    "export",
    "load",
    "predict",
    "register_hf",
    "train",
]

__getattr__, __dir__ = attach(
    __name__,
    {
        "Predictor": "vitft.deploy.predictor",
        **dict.fromkeys(["compose", "evaluate", "export", "load", "predict", "train"], "vitft.api"),
        "register_hf": "vitft.modelio.hf",
    },
)


resolvers.register()  # ${vitft_root:} and ${vitft_run_dir:} in the configs
OmegaConf.register_new_resolver("vitft_weights", weights_dir, replace=True)
