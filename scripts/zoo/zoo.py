#!/usr/bin/env python3
"""mlc on models outside the development set (made by export.py): agreement with ONNX Runtime,
then batch-1 latency side by side.

usage: zoo.py DIR [--mlc PATH] [--threads 1,2] [--repeat 2] [--check-only] [MODEL ...]

For every DIR/*.onnx (or the MODELs named): seeded inputs (symbolic dims: batch 1, others 32;
inputs named *mask* all ones, integer inputs in [0, 100)), ONNX Runtime's outputs, and mlc's
(`mlc run --engine cpu`, i.e. compiled, no interpreter fallback); prints the largest error
relative to the largest reference magnitude. Then, unless --check-only, the median latency of
ONNX Runtime (ORT_ENABLE_ALL) and of `mlc bench` (2 s of runs per cell, as
../../shared/models/peers.py times ORT), interleaved per model, the fastest median of the
repeats per cell, and the ratio mlc/ORT. Needs the peers' venv (numpy, onnx, onnxruntime).
"""
import argparse, glob, json, os, re, subprocess, sys, tempfile, time

import numpy as np
import onnx
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("models", nargs="*")
ap.add_argument("--mlc", default=os.path.join(os.path.dirname(__file__), "../../target/release/mlc"))
ap.add_argument("--threads", default="1,2")
ap.add_argument("--repeat", type=int, default=2)
ap.add_argument("--check-only", action="store_true")
a = ap.parse_intermixed_args()
work = tempfile.mkdtemp(prefix="mlc-zoo-")
paths = [os.path.join(a.dir, m if m.endswith(".onnx") else m + ".onnx") for m in a.models] or sorted(
    glob.glob(os.path.join(a.dir, "*.onnx")))


def inputs(path, d):
    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(0)
    feeds, args = {}, []
    for i in m.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        dims = [x.dim_value if x.dim_value > 0 else (1 if k == 0 else 32) for k, x in enumerate(t.shape.dim)]
        dt = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if "mask" in i.name:
            v = np.ones(dims, dt)
        elif np.issubdtype(dt, np.integer):
            v = rng.integers(0, 100, dims).astype(dt)
        else:
            v = rng.standard_normal(dims).astype(dt)
        f = os.path.join(d, f"in_{len(args)}.npy")
        np.save(f, v)
        feeds[i.name] = v
        args += ["--input", f"{i.name}={f}"]
    return feeds, args


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_ms(s, feeds):
    for _ in range(5):
        s.run(None, feeds)
    ts, end = [], time.time() + 2
    while time.time() < end or len(ts) < 10:
        t0 = time.perf_counter()
        s.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


rows = []
for path in paths:
    name = os.path.basename(path)[:-5]
    d = os.path.join(work, name)
    os.makedirs(d)
    feeds, args = inputs(path, d)
    s = session(path, 2)
    ref, onames = s.run(None, feeds), [o.name for o in s.get_outputs()]
    r = subprocess.run([a.mlc, "run", path, "--engine", "cpu", "-o", os.path.join(d, "out")] + args,
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{name}: mlc failed: {r.stderr.strip()[-400:]}", flush=True)
        rows.append((name, None, None))
        continue
    worst = 0.0
    for o, w in zip(onames, ref):
        g = np.load(os.path.join(d, "out", re.sub(r"[^A-Za-z0-9._-]", "_", o) + ".npy"))
        if g.shape != w.shape:
            worst = float("inf")
            continue
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        if w.size:
            worst = max(worst, float(np.max(np.abs(w64 - g64))) / max(float(np.max(np.abs(w64))), 1e-30))
    print(f"{name}: agrees with ORT to {worst:.1e} (max error / max |output|)", flush=True)
    rows.append((name, worst, args))

if a.check_only:
    sys.exit(0)
threads = [int(t) for t in a.threads.split(",")]
print(f"\n| model | " + " | ".join(f"mlc {t}T | ORT {t}T | mlc/ORT {t}T" for t in threads) + " |")
print("|---|" + "---|---|---|" * len(threads))
for name, worst, args in rows:
    if worst is None:
        continue
    path = os.path.join(a.dir, name + ".onnx")
    feeds = {}
    for spec in args[1::2]:
        n, f = spec.split("=", 1)
        feeds[n] = np.load(f)
    cells = []
    for t in threads:
        s = session(path, t)
        best_m, best_o = float("inf"), float("inf")
        for _ in range(a.repeat):
            r = subprocess.run([a.mlc, "bench", path, "--threads", str(t), "--min-time", "2", "--warmup", "10",
                                "--json"] + args, capture_output=True, text=True)
            best_m = min(best_m, json.loads(r.stdout)["median_ms"]) if r.returncode == 0 else best_m
            best_o = min(best_o, ort_ms(s, feeds))
        cells.append(f"{best_m:.2f} | {best_o:.2f} | {best_m / best_o:.2f}")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
