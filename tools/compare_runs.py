"""One line comparing `llrtrain bench` JSON lines of the same steps, for tools/gpu_check.sh's verdicts:

    python3 tools/compare_runs.py graphs OUT/bench.jsonl graphs.jsonl   # eager -> --cuda-graphs (replays, loss)
    python3 tools/compare_runs.py legacy OUT/bench.jsonl legacy.jsonl   # legacy cuDNN only -> default plans
    python3 tools/compare_runs.py lowmem OUT/bench.jsonl                # LLR's memory options -> time and peak

Rows pair by (model, activation, method); a missing or unreadable file pairs nothing.
"""
import json
import sys


def rows(path):
    try:
        return {(j["model"], j.get("act"), j["method"]): j for j in map(json.loads, open(path))
                if j.get("framework") == "llrtrain"}
    except OSError:
        return {}


def graphs(eager, recorded):
    out = []
    for k, g in recorded.items():
        e = eager.get(k)
        if not e or e.get("cuda_graphs"):
            continue
        loss = ("equal" if g.get("loss_last_step") == e.get("loss_last_step") else
                "%.6g vs %.6g" % (g.get("loss_last_step", float("nan")), e.get("loss_last_step", float("nan"))))
        out.append("%s %s %.2f->%.2f ms (%.2fx, %.2g replays and %.2g recordings/step, loss %s)" % (
            k[0], k[2], e["ms_step_median"], g["ms_step_median"], g["ms_step_median"] / e["ms_step_median"],
            g.get("graph_replays_per_step", 0), g.get("graph_recordings_per_step", float("nan")), loss))
    return out or ["no graph runs to compare"]


def legacy(ours, old):
    out = ["%s %s %.2f -> %.2f ms (%.2fx), peak %.2f -> %.2f GiB" % (
        k[0], k[2], l["ms_step_median"], ours[k]["ms_step_median"], ours[k]["ms_step_median"] / l["ms_step_median"],
        l["peak_gib"], ours[k]["peak_gib"]) for k, l in old.items() if k in ours]
    return out or ["no legacy runs to compare"]


def lowmem(runs, _=None):
    out = []
    for (model, act, method), j in runs.items():
        suffix = next((x for x in ("-seg8-renom", "-seg8") if method.endswith(x)), None)
        if suffix is None:
            continue
        base, nat = runs.get((model, act, method[: -len(suffix)])), runs.get((model, act, "natural"))
        if base and nat:
            out.append("%s %s %.1f -> %.1f ms, peak %.2f -> %.2f GiB (natural %.2f: %.2fx -> %.2fx)" % (
                model, method[: -len(suffix)], base["ms_step_median"], j["ms_step_median"], base["peak_gib"],
                j["peak_gib"], nat["peak_gib"], base["peak_gib"] / nat["peak_gib"], j["peak_gib"] / nat["peak_gib"]))
    return out or ["no low-memory runs to compare"]


if __name__ == "__main__":
    mode, base = sys.argv[1:3]
    other = rows(sys.argv[3]) if len(sys.argv) > 3 else None
    print("; ".join({"graphs": graphs, "legacy": legacy, "lowmem": lowmem}[mode](rows(base), other)))
