"""PyTorch at the shapes of `cargo run --release --example bench` (the kernel table), so the
table can print each kernel's time as a ratio to PyTorch's on the same device:

    python3 tools/bench_torch_kernels.py > torch_kernels.jsonl            # GPU shapes, CUDA
    python3 tools/bench_torch_kernels.py --small --device cpu > t.jsonl   # the llvmpipe shapes
    cargo run --release --example bench -- --torch torch_kernels.jsonl

Prints one JSON line per row: {"kernel", "shape", "ms"} with the bench's own kernel and
shape strings. float32 everywhere, TF32 off. Median of repeated runs after warm-up (CUDA
events on a GPU, wall time on the CPU). ../shared/tools/bench_torch.py stays the reference
for cuBLAS, copy bandwidth and the HF training step; this adds the rows it does not have.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--small", action="store_true", help="the CPU-adapter shapes of the bench")
args = ap.parse_args()
dev = args.device
cuda = dev.startswith("cuda")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)


def s(small, big):
    return small if args.small else big


def bench(fn, reps=s(5, 20), warm=3):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def out(kernel, shape, fn):
    try:
        print(json.dumps({"kernel": kernel, "shape": shape, "ms": bench(fn)}), flush=True)
    except Exception as ex:  # e.g. out of memory: say so, keep going
        print(json.dumps({"kernel": kernel, "shape": shape, "error": str(ex)[:200]}), flush=True)


def rand(*shape, grad=False):
    return (torch.rand(*shape, device=dev) - 0.5).requires_grad_(grad)


with torch.no_grad():
    n = s(256, 4096)
    a, b = rand(n, n), rand(n, n)
    out("matmul A B", f"{n}³", lambda: a @ b)
    out("matmul A Bᵀ (forward)", f"{n}³", lambda: a @ b.t())
    out("matmul Aᵀ B (weight grad)", f"{n}³", lambda: a.t() @ b)
    del a, b

    rows, cols = s(4096, 65536), 1024  # --small: burnbench's SCALE 0.0625 shape
    x = rand(rows, cols)
    y = torch.softmax(x, -1)
    dy = rand(rows, cols)
    out("softmax forward", f"{rows}×{cols}", lambda: torch.softmax(x, -1))
    out("softmax backward", f"{rows}×{cols}",
        lambda: torch.ops.aten._softmax_backward_data(dy, y, -1, torch.float32))
    del x, y, dy

    r, h = s(1024, 4096), s(256, 768)
    x, g, bt, dy = rand(r, h), rand(h), rand(h), rand(r, h)
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [h], g, bt, 1e-12)
    out("layernorm forward", f"{r}×{h}", lambda: F.layer_norm(x, (h,), g, bt, 1e-12))
    out("layernorm backward (dx)", f"{r}×{h}",
        lambda: torch.ops.aten.native_layer_norm_backward(
            dy, x, [h], mean, rstd, g, bt, [True, False, False]))

    n = s(1 << 18, 1 << 24)
    x = rand(n)
    out("gelu forward", f"{n}", lambda: F.gelu(x))

    # HF RoFormer's rotation (modeling_roformer.apply_rotary_position_embeddings) on [B, T, H, d].
    bb, t, hh, dd = s(2, 8), s(128, 512), s(4, 12), 64
    x = rand(bb, t, hh, dd)
    pos = torch.arange(t, device=dev, dtype=torch.float32)[:, None]
    inv = 10000.0 ** (-torch.arange(0, dd, 2, device=dev, dtype=torch.float32) / dd)
    ang = pos * inv
    sin = torch.stack([ang.sin(), ang.sin()], -1).reshape(t, 1, dd)
    cos = torch.stack([ang.cos(), ang.cos()], -1).reshape(t, 1, dd)

    def rope():
        half = torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape_as(x)
        return x * cos + half * sin

    out("rope", f"[{bb},{t},{hh},{dd}]", rope)

    vocab, dim, tokens = s(1000, 32000), s(128, 768), s(1024, 4096)
    table = rand(vocab, dim)
    ids = (torch.arange(tokens, device=dev) * 7919) % vocab
    out("embedding lookup", f"{tokens} of {vocab}×{dim}", lambda: F.embedding(ids, table))
    del table

rows, classes = s(256, 4096), s(1000, 32000)
logits = rand(rows, classes, grad=True)
labels = torch.arange(rows, device=dev) % classes


def xent():
    logits.grad = None
    F.cross_entropy(logits, labels, ignore_index=-100).backward()


out("cross-entropy forward+backward", f"{rows}×{classes}", xent)
del logits

n = s(1 << 20, 110_000_000)
p = torch.nn.Parameter(rand(n))
p.grad = rand(n)
try:
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, fused=True)
except Exception:  # no fused kernel for this device
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, foreach=True)
out("adamw", f"{n}", opt.step)
del p, opt

t = s(256, 4096)
q, k, v = rand(1, 8, t, 64, grad=True), rand(1, 8, t, 64, grad=True), rand(1, 8, t, 64, grad=True)
do = rand(1, 8, t, 64)
with torch.no_grad():
    out("fused softmax attention forward", f"B1 H8 T{t} d64",
        lambda: F.scaled_dot_product_attention(q, k, v))


def sdpa_fwd_bwd():
    torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do)


out("fused softmax attention forward+backward", f"B1 H8 T{t} d64", sdpa_fwd_bwd)

with torch.no_grad():
    def linear():  # Katharopoulos et al., non-causal, as einsums (feature map included)
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.einsum("bhnd,bhne->bhde", fk, v)
        z = 1 / (torch.einsum("bhnd,bhd->bhn", fq, fk.sum(2)) + 1e-6)
        return torch.einsum("bhnd,bhde,bhn->bhne", fq, kv, z)

    out("linear attention forward (scan)", f"B1 H8 T{t} d64", linear)
