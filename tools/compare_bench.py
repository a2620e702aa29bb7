"""Side-by-side table of `llrtrain bench` JSON lines and the PyTorch anchor's (torch_anchor.py) from the same machine,
then one summary line (ours/torch per method) that tools/gpu_check.sh takes as its verdict.

    python3 tools/compare_bench.py OUT/bench.jsonl OUT/torch_anchor.jsonl
"""
import json
import sys

# llrtrain method -> the PyTorch anchor's name for the same computation (LLR: exact gradient, double backprop there).
PAIRS = {"natural": "natural", "pgd-7": "pgd-7", "pgd-10": "pgd-10", "trades-10": "trades-10",
         "llr-2-exact": "llr-2-dbp", "llr-10-exact": "llr-10-dbp", "llr-2-fd": "llr-2-fd", "llr-10-fd": "llr-10-fd"}


def load(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []


def main():
    ours = [r for r in load(sys.argv[1]) if "ms_step_median" in r]
    theirs = {(r["model"], r["prec"], r["method"]): r for r in load(sys.argv[2]) if "ms_step_median" in r}
    print(f"{'model':11} {'prec':5} {'method':13} {'ours ms':>9} {'torch ms':>9} {'ours/torch':>10} "
          f"{'ours GiB':>9} {'torch GiB':>9}")
    summary = []
    for r in ours:
        t = theirs.get((r["model"], r["prec"], PAIRS.get(r["method"], r["method"])))
        tm = f"{t['ms_step_median']:9.2f}" if t else f"{'-':>9}"
        ratio = f"{r['ms_step_median'] / t['ms_step_median']:10.2f}" if t else f"{'-':>10}"
        tg = f"{t['peak_gib']:9.2f}" if t else f"{'-':>9}"
        print(f"{r['model']:11} {r['prec']:5} {r['method']:13} {r['ms_step_median']:9.2f} {tm} {ratio} "
              f"{r['peak_gib']:9.2f} {tg}")
        who = r["method"] if r["model"] == ours[0]["model"] else f"{r['model']} {r['method']}"
        summary.append(f"{who} {r['ms_step_median']:.1f} ms" +
                       (f" (torch {t['ms_step_median']:.1f}, x{r['ms_step_median'] / t['ms_step_median']:.2f})" if t else ""))
    failed = [r["method"] for r in load(sys.argv[1]) + load(sys.argv[2]) if "error" in r]
    print("summary: " + ("; ".join(summary) if summary else "no llrtrain timings") +
          (f"; errors in {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
