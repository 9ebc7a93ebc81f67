"""Baselines on the GPU machine: torch.matmul (cuBLAS) bf16 TFLOP/s at the shapes mlc-gpu times,
the eager elementwise y = relu(x*a+b), and device-copy bandwidth. CUDA events, warm-up, median.

python3 scripts/gpu/bench_torch.py
"""
import statistics
import torch

PEAK = 989.0  # H100 SXM dense bf16 TFLOP/s


def time_ms(fn, warmup=10, reps=50):
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


def main():
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__,
          "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
    shapes = [(4096, 4096, 4096, "square"), (8192, 8192, 8192, "square"),
              (4096, 3072, 768, "BERT-base FFN up"), (4096, 12288, 4096, "Llama-7B QKV"),
              (4096, 11008, 4096, "Llama-7B MLP up"), (4096, 4096, 11008, "Llama-7B MLP down")]
    g = torch.Generator(device="cuda").manual_seed(0)
    for m, n, k, what in shapes:
        a = torch.rand(m, k, device="cuda", generator=g, dtype=torch.float32).mul_(2).sub_(1).to(torch.bfloat16)
        b = torch.rand(k, n, device="cuda", generator=g, dtype=torch.float32).mul_(2).sub_(1).to(torch.bfloat16)
        ms = time_ms(lambda: torch.matmul(a, b))
        tf = 2 * m * n * k / (ms * 1e-3) / 1e12
        print(f"torch.matmul bf16 {m:>5}x{n:<5}x{k:<5} {ms:8.3f} ms {tf:7.1f} TFLOP/s {100 * tf / PEAK:5.1f}% peak  [{what}]")
        # The nn.Linear layout (weights N x K), which mlc's wgmma kernels take.
        w = b.t().contiguous()
        ms = time_ms(lambda: torch.nn.functional.linear(a, w))
        tf = 2 * m * n * k / (ms * 1e-3) / 1e12
        print(f"torch linear(a, w[NxK]) bf16 {m:>5}x{n:<5}x{k:<5} {ms:8.3f} ms {tf:7.1f} TFLOP/s {100 * tf / PEAK:5.1f}% peak  [{what}]")
        del a, b, w
    n = (1 << 28) + 3
    x = torch.rand(n, device="cuda", generator=g) * 2 - 1
    ms = time_ms(lambda: torch.relu(x * 1.75 - 0.25), 5, 30)
    print(f"torch eager relu(x*a+b) f32 n={n} {ms:.3f} ms {8 * n / (ms * 1e-3) / 1e9:.0f} GB/s (counting one read + one write)")
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), 3, 20)
    print(f"torch device copy {4 * n >> 20} MiB {ms:.3f} ms {8 * n / (ms * 1e-3) / 1e9:.0f} GB/s (read+write)")


if __name__ == "__main__":
    main()
