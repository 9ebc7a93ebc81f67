#!/usr/bin/env python3
"""mlc, ONNX Runtime and tract side by side on the CPU, in one run, with ratios.

  python scripts/bench_cpu.py [--models-dir models-dev] [--threads 1,2] [--repeat 3] [--runs 50]
                              [--only a,b] [--mlc target/release/mlc] [--json OUT.json]

For every development model (MODELS_DIR/*.onnx with reference inputs in MODELS_DIR/ref/<model>/inputs):
  Every cell times at least --runs runs and at least 2 s (peers.py's protocol; --min-time for mlc).
  1. `mlc compile --target x86_64` once (shapes from the reference inputs), timed;
  2. --repeat passes, each interleaving `mlc bench ARTIFACT --threads T --json` and the peers
     (`../shared/models/peers.py`, one subprocess per runtime and thread count: ORT with T threads,
     tract single-threaded, as peers.py runs it); per cell the fastest median of the passes is kept
     (2-vCPU machines jump between two speed levels every few seconds: interleaving and repeating
     is what makes the ratios meaningful).
Prints a markdown table: median ms per runtime and thread count, mlc/ORT per thread count, and
mlc (1 thread) / tract (1 thread). A ratio below 1 means mlc is faster.
"""
import argparse, json, os, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(ROOT, "..", "shared", "models", "peers.py")


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def ref_inputs(models_dir, stem):
    d = os.path.join(models_dir, "ref", stem, "inputs")
    out = []
    for f in sorted(os.listdir(d)):
        if f.endswith(".npy"):
            name = f[:-4].split("_", 1)[1]
            out.append((name, os.path.join(d, f)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models-dev"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--min-time", type=float, default=2.0,
                    help="seconds each mlc cell keeps timing (peers.py times ORT and tract for 2 s)")
    ap.add_argument("--only", default="")
    ap.add_argument("--mlc", default=os.path.join(ROOT, "target", "release", "mlc"))
    ap.add_argument("--python", default=os.path.expanduser("~/.cache/mlc-models/venv/bin/python"))
    ap.add_argument("--no-tract", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    stems = sorted(f[:-5] for f in os.listdir(a.models_dir) if f.endswith(".onnx"))
    if a.only:
        stems = [s for s in stems if s in a.only.split(",")]
    tmp = tempfile.mkdtemp(prefix="mlc_bench_")
    results = {}
    for stem in stems:
        model = os.path.join(a.models_dir, stem + ".onnx")
        ins = ref_inputs(a.models_dir, stem)
        import numpy as np  # the peers' venv has numpy; shapes come from the reference inputs
        shapes = [f"{n}={'x'.join(map(str, np.load(p).shape))}" for n, p in ins]
        art = os.path.join(tmp, stem + ".mlca")
        r = {"error": None}
        try:
            cmd = [a.mlc, "compile", model, "--target", "x86_64", "-o", art]
            for s in shapes:
                cmd += ["--shape", s]
            import time
            t0 = time.time(); sh(cmd); r["compile_s"] = time.time() - t0
        except Exception as e:  # noqa: BLE001 - reported in the table
            r["error"] = str(e).splitlines()[0][:200]
        for rep in range(a.repeat):
            for t in threads:
                if r["error"] is None:
                    cmd = [a.mlc, "bench", art, "--threads", str(t), "--iters", str(a.runs), "--min-time", str(a.min_time),
                           "--warmup", "10", "--json"]
                    for n, p in ins:
                        cmd += ["--input", f"{n}={p}"]
                    try:
                        m = json.loads(sh(cmd))["median_ms"]
                        r[f"mlc{t}"] = min(r.get(f"mlc{t}", float("inf")), m)
                    except Exception as e:  # noqa: BLE001
                        r["error"] = str(e).splitlines()[0][:200]
            pj = os.path.join(tmp, f"{stem}_peers.json")
            cmd = [a.python, PEERS, model, "--threads", ",".join(map(str, threads)), "--runs", str(a.runs), "--json", pj]
            if a.no_tract:
                cmd.append("--no-tract")
            try:
                sh(cmd)
                pr = json.load(open(pj))[stem]
                for k, v in pr.items():
                    if "median_ms" in v:
                        r[k] = min(r.get(k, float("inf")), v["median_ms"])
            except Exception as e:  # noqa: BLE001
                r.setdefault("peer_error", str(e).splitlines()[0][:200])
        results[stem] = r
        print(f"{stem}: {json.dumps(r)}", file=sys.stderr, flush=True)
    f = lambda x: "-" if x is None else f"{x:.2f}"
    ratio = lambda x, y: "-" if x is None or y is None else f"{x / y:.2f}"
    hdr = "| model | " + " | ".join(f"mlc {t}T" for t in threads) + " | " + " | ".join(f"ORT {t}T" for t in threads)
    hdr += ("" if a.no_tract else " | tract 1T") + " | " + " | ".join(f"mlc/ORT {t}T" for t in threads)
    hdr += ("" if a.no_tract else " | mlc/tract 1T") + " |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for stem, r in results.items():
        row = f"| {stem} | " + " | ".join(f(r.get(f"mlc{t}")) for t in threads) + " | "
        row += " | ".join(f(r.get(f"ort{t}")) for t in threads)
        if not a.no_tract:
            row += f" | {f(r.get('tract'))}"
        row += " | " + " | ".join(ratio(r.get(f"mlc{t}"), r.get(f"ort{t}")) for t in threads)
        if not a.no_tract:
            row += f" | {ratio(r.get('mlc1'), r.get('tract'))}"
        row += " |"
        if r.get("error"):
            row += f" mlc: {r['error']}"
        print(row, flush=True)
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
