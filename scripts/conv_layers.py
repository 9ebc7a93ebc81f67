#!/usr/bin/env python3
"""Single f32 convolution layers: mlc's step time against ONNX Runtime's kernel time, side by side.

  python scripts/conv_layers.py [--mlc target/release/mlc] [--threads 1] [--rounds 3]
                                [--only TEXT] [--mlc-b OTHER_MLC] [--layer CIN,COUT,K,S,HW,GROUP ...]

Each layer (Conv + ReLU, batch 1, random weights) is written to a temporary ONNX file. mlc's time is
the layer's step in `mlc bench FILE --profile` (the kernel alone: no input copy); ONNX Runtime's is the
Conv node's kernel time from its profiler (its NCHWc reorders of the input and output, which a
whole model would mostly not run, are left out). Each cell is the fastest of --rounds interleaved
rounds (this 2-vCPU machine jumps between speed levels). With --mlc-b a second mlc binary is timed
in the same rounds (an A/B of a kernel change); the ratio is of the last mlc column to ORT.
--layer (repeatable) times the given layers instead of the built-in list.
"""
import argparse, collections, json, os, re, subprocess, sys, tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (label, in channels, out channels, kernel, stride, input size, group)
LAYERS = [
    ("stem 3->16 3x3 s2 @224", 3, 16, 3, 2, 224, 1),
    ("stem 3->32 3x3 s2 @224", 3, 32, 3, 2, 224, 1),
    ("stem 3->64 3x3 s2 @224", 3, 64, 3, 2, 224, 1),
    ("stem 3->64 7x7 s2 @224", 3, 64, 7, 2, 224, 1),
    ("8->16 3x3 @112", 8, 16, 3, 1, 112, 1),
    ("16->24 3x3 s2 @112", 16, 24, 3, 2, 112, 1),
    ("32->32 3x3 s2 @56", 32, 32, 3, 2, 56, 1),
    ("24->24 5x5 @28", 24, 24, 5, 1, 28, 1),
    ("group 48/8 3x3 s2 @112", 48, 48, 3, 2, 112, 6),
    ("64->128 3x3 s2 @56", 64, 128, 3, 2, 56, 1),
    ("128->32 3x3 @56", 128, 32, 3, 1, 56, 1),
    ("128->32 3x3 @14", 128, 32, 3, 1, 14, 1),
    ("16->64 3x3 @55", 16, 64, 3, 1, 55, 1),
    ("dw 16 3x3 @112", 16, 16, 3, 1, 112, 16),
    ("dw 48 3x3 s2 @112", 48, 48, 3, 2, 112, 48),
    ("pw 32->16 @112", 32, 16, 1, 1, 112, 1),
    ("pw 16->96 @112", 16, 96, 1, 1, 112, 1),
    ("pw 96->24 @56", 96, 24, 1, 1, 56, 1),
    ("pw 144->24 @56", 144, 24, 1, 1, 56, 1),
    ("pw 96->576 @14", 96, 576, 1, 1, 14, 1),
]


def layer(path, cin, cout, k, s, hw, group):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((cout, cin // group, k, k)) * 0.1).astype(np.float32), "W")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), "B")
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[k, k], strides=[s, s],
                         pads=[k // 2] * 4, group=group),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def mlc_us(mlc, path, threads):
    out = subprocess.run([mlc, "bench", path, "--threads", str(threads), "--profile", "5"],
                         capture_output=True, text=True)
    m = re.search(r"([\d.]+) ms per run in steps", out.stdout + out.stderr)
    if not m:
        raise RuntimeError(f"{mlc} bench {path}: {out.stderr.strip()}")
    return float(m.group(1)) * 1000


def ort_us(path, threads, workdir):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(workdir, "ort")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    x = np.random.rand(*i.shape).astype(np.float32)
    runs = 100
    for _ in range(runs):
        sess.run(None, {i.name: x})
    prof = sess.end_profiling()
    total = collections.defaultdict(float)
    for e in json.load(open(prof)):
        op = e.get("args", {}).get("op_name", "")
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and "Conv" in op:
            total["conv"] += e["dur"]
    os.remove(prof)
    return total["conv"] / runs


def main():
    ap = argparse.ArgumentParser()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--mlc", default=os.path.join(root, "target", "release", "mlc"))
    ap.add_argument("--mlc-b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    ap.add_argument("--layer", action="append", default=[],
                    help="CIN,COUT,K,S,HW,GROUP: a layer to time instead of the built-in list")
    a = ap.parse_args()
    layers = LAYERS
    if a.layer:
        layers = []
        for spec in a.layer:
            cin, cout, k, s, hw, group = (int(v) for v in spec.split(","))
            layers.append((f"{cin}->{cout} {k}x{k} s{s} @{hw} g{group}", cin, cout, k, s, hw, group))
    bins = [a.mlc] + ([a.mlc_b] if a.mlc_b else [])
    heads = ["mlc"] + (["mlc B"] if a.mlc_b else []) + ["ORT"]
    print(f"| layer ({a.threads} thread{'s' if a.threads > 1 else ''}), µs | " + " | ".join(heads)
          + f" | {heads[-2]}/ORT |")
    print("|---|" + "---:|" * (len(heads) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for label, cin, cout, k, s, hw, group in layers:
            if a.only not in label:
                continue
            path = os.path.join(tmp, "layer.onnx")
            layer(path, cin, cout, k, s, hw, group)
            best = [float("inf")] * (len(bins) + 1)
            for _ in range(a.rounds):
                for j, b in enumerate(bins):
                    best[j] = min(best[j], mlc_us(b, path, a.threads))
                best[-1] = min(best[-1], ort_us(path, a.threads, tmp))
            cells = " | ".join(f"{v:.0f}" for v in best)
            print(f"| {label} | {cells} | {best[-2] / best[-1]:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
