"""Plots a run's metrics.jsonl: training loss, training (clean and perturbed) and held-out accuracy, and the learning rate against step.

    python3 tools/plot_metrics.py RUN_DIR [--out RUN_DIR/metrics.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run", help="run folder (with metrics.jsonl) or the metrics.jsonl file")
    p.add_argument("--out", help="PNG to write (default: metrics.png in the run folder)")
    a = p.parse_args()
    path = a.run if a.run.endswith(".jsonl") else os.path.join(a.run, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path) if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    held = [r for r in rows if r.get("split") in ("val", "test")]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if held:
        ax[0].plot([r["step"] for r in held], [r["loss"] for r in held], "o-", label=held[0]["split"])
    ax[0].set(xlabel="step", ylabel="training objective (held out: cross-entropy)", title="loss")
    # PGD and FGSM-style methods never see the clean batch while training: they log adv_accuracy only.
    for key, label in (("accuracy", "train"), ("adv_accuracy", "train, perturbed")):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            ax[1].plot([s for s, _ in pts], [v for _, v in pts], label=label)
    if held:
        ax[1].plot([r["step"] for r in held], [r["accuracy"] for r in held], "o-", label=held[0]["split"])
    ax[1].set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax[2].plot([r["step"] for r in train], [r["lr"] for r in train])
    ax[2].set(xlabel="step", ylabel="learning rate", title="learning rate")
    for x in ax[:2]:
        x.legend()
    fig.tight_layout()
    out = a.out or os.path.join(os.path.dirname(path), "metrics.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
