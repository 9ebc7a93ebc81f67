"""PyTorch baselines for the development models, on the GPU machine: the same architectures
(random weights; the timing depends on shapes, not values) at batch 1, fp32, eager and
torch.compile, median of CUDA-event timings. Also lists ONNX Runtime's providers and, where it
has CUDA, times the .onnx files given on the command line with it.

python3 scripts/gpu/bench_models_torch.py [MODEL.onnx ...]
"""
import statistics
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def time_ms(fn, warmup=10, reps=50):
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        ts = []
        for _ in range(reps):
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            ts.append((s, e))
        torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ts)


def models():
    mlp = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
        torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    yield "mlp_784_512_512_10", mlp, (torch.randn(1, 1, 28, 28),)
    import torchvision
    yield "resnet18", torchvision.models.resnet18(), (torch.randn(1, 3, 224, 224),)
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, vocab_size=30522)
    bert = BertModel(cfg)
    ids = torch.randint(0, 30522, (1, 128))
    yield "bert_minilm_l6_h384", bert, (ids, torch.ones(1, 128, dtype=torch.int64),
                                         torch.zeros(1, 128, dtype=torch.int64))


def main():
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    t0 = time.time()
    rows = []
    for name, m, args in models():
        m = m.cuda().eval()
        args = tuple(a.cuda() for a in args)
        eager = time_ms(lambda: m(*args))
        comp = float("nan")
        if time.time() - t0 < 150:
            try:
                cm = torch.compile(m)
                comp = time_ms(lambda: cm(*args), warmup=3)
            except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, not fatal
                print(f"{name}: torch.compile failed: {e}")
        rows.append((name, eager, comp))
        print(f"torch {name}: eager {eager:.4f} ms, torch.compile {comp:.4f} ms", flush=True)
    try:
        import onnxruntime as ort
        provs = ort.get_available_providers()
        print("onnxruntime", ort.__version__, provs)
        if "CUDAExecutionProvider" in provs:
            import numpy as np
            for path in sys.argv[1:]:
                s = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
                feed = {}
                for i in s.get_inputs():
                    shape = [d if isinstance(d, int) else 1 for d in i.shape]
                    feed[i.name] = np.random.rand(*shape).astype(np.float32)
                for _ in range(5):
                    s.run(None, feed)
                ts = []
                for _ in range(50):
                    a = time.perf_counter()
                    s.run(None, feed)
                    ts.append((time.perf_counter() - a) * 1e3)
                print(f"ort-cuda {path}: median {statistics.median(ts):.4f} ms (host clock)")
    except Exception as e:  # noqa: BLE001
        print("onnxruntime:", e)


if __name__ == "__main__":
    main()
