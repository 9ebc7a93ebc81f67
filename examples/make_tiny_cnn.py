#!/usr/bin/env python3
"""Writes mlc's example model, tiny_cnn.onnx, with an input and ONNX Runtime's output for it.

    python examples/make_tiny_cnn.py [OUT_DIR]      (default: examples/build)

The model is a small image classifier with seeded random weights:
    image f32[batch,1,8,8] -> Conv 4x3x3 (pad 1) -> Relu -> Flatten -> Gemm 256->10 -> Softmax
    -> probabilities f32[batch,10]
`batch` is symbolic, as in real exported models. Files written to OUT_DIR:
    tiny_cnn.onnx                the model (opset 17)
    image.npy                    an input with batch 2
    expected_probabilities.npy   ONNX Runtime's output for it (skipped if onnxruntime is absent)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model():
    rng = np.random.default_rng(0)
    conv_w = (rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32)
    conv_b = (rng.standard_normal(4) * 0.1).astype(np.float32)
    fc_w = (rng.standard_normal((10, 256)) * 0.1).astype(np.float32)
    fc_b = (rng.standard_normal(10) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
        helper.make_node("Flatten", ["relu_out"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     [(conv_w, "conv.weight"), (conv_b, "conv.bias"), (fc_w, "fc.weight"), (fc_b, "fc.bias")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="mlc-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "build")
    os.makedirs(out, exist_ok=True)
    model = make_model()
    path = os.path.join(out, "tiny_cnn.onnx")
    onnx.save(model, path)
    image = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(os.path.join(out, "image.npy"), image)
    print(f"wrote {path} and image.npy (f32[2,1,8,8])")
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: no reference output")
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (probs,) = sess.run(None, {"image": image})
    np.save(os.path.join(out, "expected_probabilities.npy"), probs)
    print(f"wrote expected_probabilities.npy (ONNX Runtime {ort.__version__})")


if __name__ == "__main__":
    main()
