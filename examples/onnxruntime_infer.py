"""ONNX Runtime: python examples/onnxruntime_infer.py outputs/<run>/export/onnx_int8 img.jpg"""

import json

import onnxruntime as ort
from _common import args, preprocess, report

folder, image = args()
meta = json.loads((folder / "metadata.json").read_text())
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2  # match the cores you give the model
session = ort.InferenceSession(str(folder / meta["file"]), opts, providers=["CPUExecutionProvider"])
x = preprocess(image, meta)


def run(x):
    return session.run(["logits"], {"pixel_values": x})[0]


report(run(x)[0], meta["labels"], run, x)
