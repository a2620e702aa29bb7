"""How far PyTorch's bf16 gradients (autocast) are from its f32 ones (TF32 off) on a softplus WRN-28-10 at batch 128,
tensor by tensor: the reference for tests/test_cuda_large.cpp's bf16-against-f32 bounds. Same measure as the test:
relative L2 of each convolution weight's gradient, of all parameter gradients together, of the logits and the input
gradient; and the spread between two bf16 runs, the second on the input jittered by one bf16 rounding
(x (1 + 2^-8 xi), xi uniform in [-1, 1]). Run by tools/gpu_check.sh on a GPU; without one it runs on the CPU
(CPU autocast: a check of the script, not the reference).

    python3 bf16_gradient_reference.py [--model wrn-28-10] [--batch 128] [--seed 0]
"""
import argparse
import math

import torch
import torch.nn.functional as F

from models import make_model


def rel(a, b):
    return (a.double() - b.double()).norm().item() / max(b.double().norm().item(), 1e-300)


def rel_all(a, b):
    num = sum(((x.double() - y.double()) ** 2).sum().item() for x, y in zip(a, b))
    den = sum((y.double() ** 2).sum().item() for y in b)
    return math.sqrt(num / den)


def pass_(model, x, y, bf16, dev):
    x = x.clone().requires_grad_(True)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    params = [p for p in model.parameters()]
    g = torch.autograd.grad(loss, [x] + params)
    return logits.float().detach(), g[0], list(g[1:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wrn-28-10")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model(a.model, act="softplus").to(dev).to(memory_format=torch.channels_last).train()
    x = torch.rand(a.batch, 3, 32, 32, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    xj = (x * (1 + (torch.rand_like(x) * 2 - 1) / 256)).clamp(0, 1)
    # Batch norm in train mode updates running statistics; gradients do not depend on them.
    ref = pass_(model, x, y, False, dev)
    got = pass_(model, x, y, True, dev)
    twin = pass_(model, xj, y, True, dev)
    names = [n for n, _ in model.named_parameters()]
    depth = int(a.model.split("-")[1]) if a.model.startswith("wrn-") else 18
    bound = 3 * math.sqrt(2 * depth) / 256
    print(f"PyTorch {torch.__version__} autocast bf16 vs f32 (TF32 off), {a.model} softplus, batch {a.batch}, "
          f"{torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}")
    print(f"  logits: relative L2 {rel(got[0], ref[0]):.4g}")
    print(f"  input gradient: relative L2 {rel(got[1], ref[1]):.4g}")
    rows = []
    for n, g, r, t in zip(names, got[2], ref[2], twin[2]):
        e, s = rel(g, r), rel(t, g)
        rows.append((e, s, n, g.dim() > 1))
    conv = [r for r in rows if r[3]]
    above = [r for r in conv if r[0] > bound]
    print(f"  all parameter gradients together: relative L2 {rel_all(got[2], ref[2]):.4g}")
    print(f"  weight gradients above {bound:.4g} (the test's a-priori bound): {len(above)} of {len(conv)}; "
          f"of those within twice the bf16 spread: {sum(1 for r in above if r[0] <= 2 * r[1])}")
    for e, s, n, _ in sorted(rows, reverse=True)[:6]:
        print(f"  worst: {n} relative L2 {e:.4g}, bf16 spread {s:.4g}, error/spread {e / max(s, 1e-300):.3g}")
    worst_conv = max(conv)
    print(f"REFERENCE {a.model} worst weight gradient {worst_conv[0]:.4g} ({worst_conv[2]}); largest error/spread "
          f"over weights {max(r[0] / max(r[1], 1e-300) for r in conv):.3g}")


if __name__ == "__main__":
    main()
