"""Recomputes, in PyTorch with double backpropagation (create_graph=True), the gradient that
`llrtrain gradcheck --dump FILE` wrote, and reports the largest difference.

    llrtrain gradcheck --objective llr --model wrn-10-1 --act softplus --dump llr.safetensors
    python3 tools/reference/objective_reference.py llr.safetensors

Same definitions as llrtrain (DESIGN.md): the nominal pass normalises with its own batch statistics (differentiated
through); LLR's perturbed pass normalises with the nominal pass's statistics; d_i = <delta_i, [grad_X S]_i> with
S = sum_i l_i; LLR = mean_i [w l_i + lambda |g_i| + mu |d_i|], g_i = l_i(x + delta) - l_i(x) - d_i. PGD: mean CE at
x + delta; TRADES: mean CE at x + beta mean KL(p(x) || p(x + delta)), both passes with their own statistics.
Runs in float64; exits non-zero above --tol.
"""
import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from models import make_model, read_metadata


class PassBatchNorm(nn.Module):
    """Batch norm whose statistics come from the current pass ('own'), are recorded, or are shared."""

    def __init__(self, bn, state):
        super().__init__()
        self.weight, self.bias, self.eps, self.state = bn.weight, bn.bias, bn.eps, state

    def forward(self, x):
        s = self.state
        if s["mode"] == "shared":
            mean, var = s["stats"][s["next"]]
            s["next"] += 1
        else:
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            if s["mode"] == "record":
                s["stats"].append((mean, var))
        shape = (1, -1, 1, 1)
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps) * self.weight.view(shape) + \
            self.bias.view(shape)


def replace_bn(module, state):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, PassBatchNorm(child, state))
        else:
            replace_bn(child, state)



def main():
    p = argparse.ArgumentParser()
    p.add_argument("dump")
    p.add_argument("--tol", type=float, default=1e-8)
    a = p.parse_args()
    meta, t = read_metadata(a.dump), load_file(a.dump)
    torch.set_default_dtype(torch.float64)
    model = make_model(meta["model"], act=meta["act"]).double()
    params = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
    missing, _ = model.load_state_dict(params, strict=False)
    assert all("running" in m or "num_batches" in m for m in missing), missing
    state = {"mode": "own", "stats": [], "next": 0}
    replace_bn(model, state)
    named = dict(model.named_parameters())
    names = [n for n in params if n in named]
    x = t["x_nhwc"].permute(0, 3, 1, 2).contiguous()
    delta = t["delta_nhwc"].permute(0, 3, 1, 2).contiguous()
    y = t["labels"].long()
    method = meta["method"]

    def run(mode, inp):
        state.update(mode=mode, next=0)
        if mode == "record":
            state["stats"] = []
        return model(inp)

    if method == "natural":
        loss = F.cross_entropy(run("own", x), y)
    elif method == "pgd":
        loss = F.cross_entropy(run("own", x + delta), y)
    elif method == "trades":
        z = run("own", x)
        za = run("own", x + delta)
        kl = (F.softmax(z, 1) * (F.log_softmax(z, 1) - F.log_softmax(za, 1))).sum(1).mean()
        loss = F.cross_entropy(z, y) + float(meta["trades_beta"]) * kl
    else:
        lam, mu, w = float(meta["lambda"]), float(meta["mu"]), float(meta["nominal_weight"])
        X = x.clone().requires_grad_(True)
        l = F.cross_entropy(run("record", X), y, reduction="none")
        gx, = torch.autograd.grad(l.sum(), X, create_graph=True)  # double backprop
        d = (delta * gx).flatten(1).sum(1)
        lp = F.cross_entropy(run("shared", x + delta), y, reduction="none")
        g = lp - l - d
        loss = (w * l + lam * g.abs() + mu * d.abs()).mean()
    grads = torch.autograd.grad(loss, [named[n] for n in names])
    worst, where = 0.0, ""
    for n, gr in zip(names, grads):
        ours = t["grad." + n]
        err = ((gr - ours).abs() / torch.maximum(torch.maximum(gr.abs(), ours.abs()), torch.ones_like(gr))).max()
        if err.item() > worst:
            worst, where = err.item(), n
    print(f"{method} on {meta['model']} ({meta['act']}), float64: objective PyTorch {loss.item():.12g} vs llrtrain "
          f"{float(meta['objective']):.12g}; largest relative gradient difference {worst:.3g} ({where}), "
          f"{sum(g.numel() for g in grads)} gradient entries over {len(names)} tensors")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
