"""TensorFlow via transformers 4.x (TF classes were removed in transformers 5):
pip install "transformers==4.57.6" tensorflow-cpu tf-keras torch
python examples/tensorflow_from_pt.py outputs/<run>/model img.jpg   (linear-head models)"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers 4.x TF models need tf-keras

from _common import args, hf_meta, preprocess, report  # noqa: E402
from transformers import TFViTForImageClassification  # noqa: E402

model_dir, image = args()
meta = hf_meta(model_dir)
model = TFViTForImageClassification.from_pretrained(str(model_dir), from_pt=True)
x = preprocess(image, meta)


def run(x):
    return model(pixel_values=x).logits.numpy()


report(run(x)[0], meta["labels"], run, x)
