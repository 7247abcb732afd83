"""LiteRT (TFLite), e.g. on a Raspberry Pi (pip install ai-edge-litert):
python examples/litert_infer.py outputs/<run>/export/tflite_int8 img.jpg"""

import json

from _common import args, preprocess, report
from ai_edge_litert.interpreter import Interpreter

folder, image = args()
meta = json.loads((folder / "metadata.json").read_text())
interpreter = Interpreter(str(folder / meta["file"]), num_threads=4)
interpreter.allocate_tensors()
inp = interpreter.get_input_details()[0]["index"]
out = interpreter.get_output_details()[0]["index"]
x = preprocess(image, meta)  # NCHW float32, batch 1


def run(x):
    interpreter.set_tensor(inp, x)
    interpreter.invoke()
    return interpreter.get_tensor(out)


report(run(x)[0], meta["labels"], run, x)
