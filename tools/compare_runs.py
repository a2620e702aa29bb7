"""One line comparing two sets of `llrtrain bench` JSON lines of the same steps, for tools/gpu_check.sh's verdicts:

    python3 tools/compare_runs.py graphs OUT/bench.jsonl graphs.jsonl   # eager -> --cuda-graphs (replays, loss)
    python3 tools/compare_runs.py legacy OUT/bench.jsonl legacy.jsonl   # LLR_CUDNN_ENGINES=0 -> default plans

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


if __name__ == "__main__":
    mode, base, other = sys.argv[1:4]
    print("; ".join({"graphs": graphs, "legacy": legacy}[mode](rows(base), rows(other))))
