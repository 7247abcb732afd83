"""Plain PyTorch + transformers: python examples/pytorch_plain.py outputs/<run>/model img.jpg"""

import torch
from _common import args, hf_meta, preprocess, report
from transformers import AutoModelForImageClassification

model_dir, image = args()
meta = hf_meta(model_dir)
model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
x = torch.from_numpy(preprocess(image, meta))


def run(x):
    with torch.inference_mode():
        return model(pixel_values=x).logits


report(run(x)[0].numpy(), meta["labels"], run, x)
