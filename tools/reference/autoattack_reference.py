"""AutoAttack's standard suite in PyTorch next to `llrtrain eval --attacks autoattack`, on the same images and model.

    source ~/.cache/llr-reference-venv/env.sh        # bash ../shared/tools/reference-venv.sh makes it
    python3 tools/reference/autoattack_reference.py --llrtrain build/llrtrain --checkpoint RUN/model.safetensors \
        --data DIR --split val --holdout 1000 --n 200 --eps 8/255 --threads 2

runs `llrtrain eval --attacks autoattack --dump-logits` (or reads a finished run: --ours-json and --images), then the
reference implementations of the same attacks from torchattacks on the images it dumped, with the standard suite's
settings (APGD-CE 100 steps, 1 restart; APGD-T 100 steps, 9 targets; FAB-T 100 steps, 9 targets; Square 5,000
queries, p_init 0.8, margin loss, the schedule not rescaled), each on the examples the ones before it left robust, in
the same number of CPU threads. Prints the robust accuracy after each attack and its seconds for both. Their random
draws differ (seeds cannot make two generators agree), so robust accuracies agree statistically, not bit for bit.
torchattacks' own AutoAttack wrapper is not used: it leaves APGD at 10 steps and rescales Square's schedule.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import torch
import torchattacks
from safetensors.torch import load_file

from models import make_model, read_metadata


def reference_suite(model, eps, seed, classes):
    return [
        ("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed)),
        ("apgd-t", torchattacks.APGDT(model, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=classes,
                                      seed=seed)),
        ("fab-t", torchattacks.FAB(model, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                   n_classes=classes, seed=seed)),
        ("square", torchattacks.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                                       loss="margin", resc_schedule=False, seed=seed)),
    ]


def run_ours(a, work):
    images = os.path.join(work, "images.safetensors")
    out = os.path.join(work, "eval.json")
    cmd = [a.llrtrain, "eval", "--checkpoint", a.checkpoint, "--data", a.data, "--split", a.split,
           "--holdout", str(a.holdout), "--n", str(a.n), "--eps", a.eps, "--seed", str(a.seed), "--device", "cpu",
           "--attacks", "autoattack", "--dump-logits", images, "--json", out]
    if a.batch:
        cmd += ["--batch", str(a.batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print("running:", " ".join(cmd), f"(OMP_NUM_THREADS={a.threads})", flush=True)
    subprocess.run(cmd, check=True, env=env)
    return out, images


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--llrtrain", help="llrtrain binary: run `llrtrain eval --attacks autoattack` first")
    p.add_argument("--data", help="CIFAR-10 binary folder (with --llrtrain)")
    p.add_argument("--split", default="test")
    p.add_argument("--holdout", type=int, default=0)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=0, help="llrtrain eval --batch (0: its default)")
    p.add_argument("--ours-json", help="eval.json of a finished `llrtrain eval --attacks autoattack` run")
    p.add_argument("--images", help="the images that run dumped (--dump-logits)")
    p.add_argument("--eps", default="8/255")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    eps = float(Fraction(a.eps))

    work = tempfile.mkdtemp(prefix="autoattack_reference_")
    if a.llrtrain:
        if not a.data:
            sys.exit("--llrtrain needs --data")
        ours_json, images = run_ours(a, work)
    else:
        if not (a.ours_json and a.images):
            sys.exit("give --llrtrain (and --data), or --ours-json and --images")
        ours_json, images = a.ours_json, a.images
    with open(ours_json) as f:
        ours = json.load(f)
    suite = next((r for r in ours["attacks"] if r["attack"] == "autoattack"), None)
    if suite is None:
        sys.exit(f"{ours_json} has no autoattack result")

    torch.set_num_threads(a.threads)
    meta = read_metadata(a.checkpoint)
    classes = int(meta["classes"])
    model = make_model(meta["model"], act=meta["act"], classes=classes)
    model.load_state_dict(load_file(a.checkpoint))
    model.eval()
    data = load_file(images)
    x = data["images_nhwc"].permute(0, 3, 1, 2).contiguous()
    y = data["labels"].long()
    n = len(x)
    if n != ours["n"]:
        sys.exit(f"{images} holds {n} images, {ours_json} evaluated {ours['n']}")
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    clean = robust.float().mean().item()

    rows = []
    for (label, attack), stage in zip(reference_suite(model, eps, a.seed, classes), suite["stages"]):
        idx = robust.nonzero().squeeze(1)
        t0 = time.perf_counter()
        if len(idx):
            adv = attack(x[idx], y[idx])
            with torch.no_grad():
                broken = model(adv).argmax(1) != y[idx]
            assert (adv - x[idx]).abs().amax().item() <= eps + 1e-6, f"{label} left the eps-ball"
            robust[idx[broken]] = False
        seconds = time.perf_counter() - t0
        rows.append((label, stage["robust_accuracy"], robust.float().mean().item(), stage["seconds"], seconds))
        print(f"reference {label}: robust accuracy {rows[-1][2]:.4f} ({seconds:.1f} s)", flush=True)

    print(f"\n{meta['model']} ({meta['act']}), {n} images, eps {a.eps}, seed {a.seed}, {a.threads} CPU threads; "
          f"clean accuracy: llrtrain {ours['clean_accuracy']:.4f}, PyTorch {clean:.4f}")
    print(f"{'robust accuracy after':<22} {'llrtrain':>9} {'reference':>9} {'diff':>7} {'llrtrain s':>11} "
          f"{'reference s':>11}")
    for label, ours_acc, ref_acc, ours_s, ref_s in rows:
        print(f"{label:<22} {ours_acc:>9.4f} {ref_acc:>9.4f} {100 * (ours_acc - ref_acc):>+6.1f}p {ours_s:>11.1f} "
              f"{ref_s:>11.1f}")


if __name__ == "__main__":
    main()
