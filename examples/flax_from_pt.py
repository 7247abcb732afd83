"""Flax/JAX via transformers 4.x (Flax classes were removed in transformers 5):
pip install "transformers==4.57.6" flax torch
python examples/flax_from_pt.py outputs/<run>/model img.jpg   (linear-head models)"""

import jax
import numpy as np
from _common import args, hf_meta, preprocess, report
from transformers import FlaxViTForImageClassification

model_dir, image = args()
meta = hf_meta(model_dir)
model = FlaxViTForImageClassification.from_pretrained(str(model_dir), from_pt=True)
x = preprocess(image, meta)
forward = jax.jit(lambda x: model(pixel_values=x).logits)


def run(x):
    return np.asarray(forward(x).block_until_ready())


report(run(x)[0], meta["labels"], run, x)
