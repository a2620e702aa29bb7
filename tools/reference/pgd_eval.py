"""The PGD-CE evaluation in PyTorch on an llrtrain checkpoint, to cross-check `llrtrain eval` on the same images.

    llrtrain eval --checkpoint RUN/model.safetensors --data DIR --n 1000 --attacks pgd-ce:20x0 \
                  --dump-logits images.safetensors
    python3 tools/reference/pgd_eval.py --checkpoint RUN/model.safetensors --images images.safetensors --steps 20

Same attack as llrtrain's pgd-ce: sign-gradient steps of eps/4 on the cross-entropy, projected onto the eps-ball and
[0, 1], batch norm in evaluation mode; --restarts 0 starts from delta = 0 (deterministic on both sides), otherwise
from uniform random starts. An example counts as broken if it is misclassified at any step.
"""
import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from models import make_model, read_metadata



def pgd(model, x, y, eps, steps, random_start):
    alpha = eps / 4
    delta = (torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x))
    delta = (x + delta).clamp(0, 1) - x
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t in range(steps + 1):
        delta.requires_grad_(True)
        z = model(x + delta)
        robust &= z.argmax(1) == y
        if t == steps:
            break
        g, = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return robust


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="written by llrtrain eval --dump-logits")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=0)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    meta = read_metadata(a.checkpoint)
    model = make_model(meta["model"], act=meta["act"], classes=int(meta["classes"]))
    model.load_state_dict(load_file(a.checkpoint))
    model = model.to(a.device).eval()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    data = load_file(a.images)
    x_all = data["images_nhwc"].permute(0, 3, 1, 2).contiguous()
    y_all = data["labels"].long()
    clean = robust = 0
    for b in range(0, len(x_all), a.batch):
        x, y = x_all[b:b + a.batch].to(a.device), y_all[b:b + a.batch].to(a.device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        r = ok.clone()
        for _ in range(max(1, a.restarts)):
            r &= pgd(model, x, y, a.eps, a.steps, a.restarts > 0)
        clean += ok.sum().item()
        robust += r.sum().item()
    n = len(x_all)
    print(f"PyTorch {meta['model']} ({meta['act']}) on {n} images: clean accuracy {clean / n:.4f}, "
          f"PGD-CE {a.steps} steps x {a.restarts} restarts at eps {a.eps:.5f}: robust accuracy {robust / n:.4f}")


if __name__ == "__main__":
    main()
