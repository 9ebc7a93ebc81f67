#!/usr/bin/env python3
"""Prints `--shape NAME=DIMS` arguments for `mlc compile` from a reference directory's inputs
(`<refdir>/meta.json` names them, `<refdir>/inputs/<i>_<name>.npy` holds them). No numpy needed:
only the .npy header is read."""
import ast, json, sys, pathlib

ref = pathlib.Path(sys.argv[1])
meta = json.loads((ref / "meta.json").read_text())
args = []
for i, name in enumerate(meta["inputs"]):
    f = ref / "inputs" / f"{i}_{name.replace('/', '_')}.npy"
    b = f.read_bytes()
    major = b[6]
    hl = int.from_bytes(b[8:10], "little") if major == 1 else int.from_bytes(b[8:12], "little")
    start = 10 if major == 1 else 12
    header = ast.literal_eval(b[start:start + hl].decode("latin1"))
    dims = "x".join(str(d) for d in header["shape"])
    args.append(f"--shape={name}={dims}")
print(" ".join(args))
