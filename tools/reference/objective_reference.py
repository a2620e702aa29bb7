"""Recomputes, in PyTorch with double backpropagation (create_graph=True), the gradient that
`llrtrain gradcheck --dump FILE` wrote, and reports the largest difference.

    llrtrain gradcheck --objective llr --model wrn-10-1 --act softplus --dump llr.safetensors
    python3 tools/reference/objective_reference.py llr.safetensors

Same definitions as llrtrain (DESIGN.md): the nominal pass normalises with its own batch statistics (differentiated
through); LLR's perturbed pass normalises with the nominal pass's statistics; d_i = <delta_i, [grad_X S]_i> with
S = sum_i l_i; LLR = mean_i [w l_i + lambda |g_i| + mu |d_i|], g_i = l_i(x + delta) - l_i(x) - d_i. PGD, FGSM-RS and
N-FGSM: mean CE at x + delta; TRADES: mean CE at x + beta mean KL(p(x) || p(x + delta)), both passes with their own
statistics. GradAlign: mean CE at x + delta + lambda (1 - mean_i cos(g1_i, g2_i)), g1 and g2 the input gradients of
the batch's mean CE at x and at x + eta (eta from the dump), each pass with its own statistics, each norm at least
1e-8. ELLE: mean CE at x + delta + lambda mean_i (l_c - alpha l_a - (1 - alpha) l_b)^2 over the dumped triplet batch
[x_a; x_b; x_c], one pass with its own statistics. Runs in float64; exits non-zero above --tol.
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

    def nchw(name):
        return t[name].permute(0, 3, 1, 2).contiguous()

    eps = float(meta["eps"])
    if method == "natural":
        loss = F.cross_entropy(run("own", x), y)
    elif method in ("pgd", "fgsm-rs", "n-fgsm"):
        radius = eps * (float(meta["nfgsm_noise"]) + float(meta["nfgsm_alpha"])) if method == "n-fgsm" else eps
        assert delta.abs().max() <= radius * (1 + 1e-12)
        assert (x + delta).min() >= -1e-12 and (x + delta).max() <= 1 + 1e-12
        loss = F.cross_entropy(run("own", x + delta), y)
    elif method == "gradalign":
        def input_gradient(point):
            p = point.clone().requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(run("own", p), y), p, create_graph=True)  # double backprop
            return g.flatten(1)

        g1, g2 = input_gradient(x), input_gradient(x + nchw("drawn.gradalign_eta"))
        cos = (g1 * g2).sum(1) / (g1.norm(dim=1).clamp_min(1e-8) * g2.norm(dim=1).clamp_min(1e-8))
        loss = F.cross_entropy(run("own", x + delta), y) + float(meta["gradalign_lambda"]) * (1 - cos.mean())
    elif method == "elle":
        points, alpha = nchw("drawn.elle_points"), t["drawn.elle_alpha"]
        n = x.shape[0]
        xa, xb, xc = points[:n], points[n:2 * n], points[2 * n:]
        w = alpha.view(-1, 1, 1, 1)
        assert torch.allclose(xc, w * xa + (1 - w) * xb, rtol=0, atol=1e-15)
        for p in (xa, xb):
            assert (p - x).abs().max() <= eps * (1 + 1e-12) and p.min() >= 0 and p.max() <= 1
        l = F.cross_entropy(run("own", points), y.repeat(3), reduction="none")
        residual = l[2 * n:] - alpha * l[:n] - (1 - alpha) * l[n:2 * n]
        loss = F.cross_entropy(run("own", x + delta), y) + float(meta["elle_lambda"]) * (residual ** 2).mean()
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
    worst, where, largest_difference, largest_gradient = 0.0, "", 0.0, 0.0
    for n, gr in zip(names, grads):
        ours = t["grad." + n]
        err = ((gr - ours).abs() / torch.maximum(torch.maximum(gr.abs(), ours.abs()), torch.ones_like(gr))).max()
        if err.item() > worst:
            worst, where = err.item(), n
        largest_difference = max(largest_difference, (gr - ours).abs().max().item())
        largest_gradient = max(largest_gradient, gr.abs().max().item())
    # The first measure is absolute for entries below 1; the second is relative however small the gradients are.
    print(f"{method} on {meta['model']} ({meta['act']}), float64: objective PyTorch {loss.item():.12g} vs llrtrain "
          f"{float(meta['objective']):.12g}; largest relative gradient difference {worst:.3g} ({where}), "
          f"max |difference| / max |gradient| {largest_difference / largest_gradient:.3g}, "
          f"{sum(g.numel() for g in grads)} gradient entries over {len(names)} tensors")
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
