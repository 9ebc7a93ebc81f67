#!/usr/bin/env python3
"""Compares mlc's output with a reference: python examples/compare.py EXPECTED.npy GOT.npy [TOL]

Prints the max absolute error and the error relative to the reference's range (the measure of
tests/src/tolerance.rs); exits 1 when the relative error exceeds TOL (default 1e-4).
"""
import sys

import numpy as np

want, got = np.load(sys.argv[1]), np.load(sys.argv[2])
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
if want.shape != got.shape:
    sys.exit(f"shape {got.shape} differs from the reference's {want.shape}")
err = np.abs(want.astype(np.float64) - got.astype(np.float64)).max(initial=0.0)
rel = err / max(np.abs(want).max(initial=0.0), np.finfo(np.float64).tiny)
print(f"agreement with ONNX Runtime: max abs error {err:.2e}, relative to range {rel:.2e} (tolerance {tol:.0e})")
sys.exit(0 if rel <= tol else 1)
