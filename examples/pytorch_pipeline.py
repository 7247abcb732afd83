"""PyTorch, transformers pipeline: python examples/pytorch_pipeline.py outputs/<run>/model img.jpg

A run's model/ folder is a plain HF model dir (vitft heads other than linear need `import vitft`).
"""

import time

from _common import args
from transformers import pipeline

model_dir, image = args()
classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
classifier(str(image))  # warm-up
start = time.perf_counter()
result = classifier(str(image))
print(result[0], f"latency {(time.perf_counter() - start) * 1e3:.1f} ms (incl. preprocessing)")
