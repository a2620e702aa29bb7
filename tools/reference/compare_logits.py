"""Loads an llrtrain checkpoint into the PyTorch reference model and compares logits on the same inputs.

    llrtrain eval --checkpoint RUN/model.safetensors --data DIR --n 64 --dump-logits logits.safetensors
    python3 tools/reference/compare_logits.py --checkpoint RUN/model.safetensors --logits logits.safetensors

Prints the largest absolute difference between llrtrain's and PyTorch's logits (batch norm in evaluation mode) and
exits non-zero above --tol.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file

from models import make_model, read_metadata



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--logits", required=True, help="written by llrtrain eval --dump-logits")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    meta = read_metadata(a.checkpoint)
    model = make_model(meta["model"], act=meta["act"], classes=int(meta["classes"]))
    model.load_state_dict(load_file(a.checkpoint), strict=True)
    model = model.to(a.device).eval()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = load_file(a.logits)
    x = ref["images_nhwc"].permute(0, 3, 1, 2).contiguous().to(a.device)
    with torch.no_grad():
        z = model(x).float().cpu()
    diff = (z - ref["logits"]).abs().max().item()
    agree = (z.argmax(1) == ref["logits"].argmax(1)).float().mean().item()
    print(f"{meta['model']} ({meta['act']}): {x.shape[0]} images, max |logits difference| = {diff:.3g}, "
          f"argmax agreement {agree:.3f}, logit scale {ref['logits'].abs().max().item():.3g}")
    sys.exit(0 if diff <= a.tol else 1)


if __name__ == "__main__":
    main()
