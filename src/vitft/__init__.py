"""vitft: fine-tuning Vision Transformers for industrial transfer learning.

Importing vitft registers the config resolvers and the ``vitft`` model type with transformers'
Auto classes, so ``pipeline("image-classification", model=<run>/model)`` loads any vitft head.
"""

__version__ = "0.1.0"

from omegaconf import OmegaConf  # noqa: E402

from vitft.core import resolvers  # noqa: E402
from vitft.modelio import hf as _hf  # noqa: E402, F401  (registers the vitft model type)
from vitft.weights import weights_dir  # noqa: E402

resolvers.register()
OmegaConf.register_new_resolver("vitft_weights", weights_dir, replace=True)
