"""Two `llrtrain bench --profile` logs side by side: per method, the step time and each op's ms per step and calls
per step before and after, largest first, with the op's GB/s after where the newer log has that column. For the GPU
check, which compares its profile with the last committed run's on the same kind of GPU.

    python3 tools/compare_profiles.py OLD.log NEW.log [--top N]
"""
import argparse
import json
import re
import sys


def parse(path):
    """{"model method": {"step": ms, "ops": {op: (ms, calls, gb_per_s or None)}}} from a profile log (a section starts
    at "== method ==" and its JSON line names the model)."""
    sections = []
    method = None
    in_ops = False
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        sys.exit(f"compare_profiles: {e}")
    for line in lines:
        m = re.match(r"^== (\S+) ==$", line)
        if m:
            method = m.group(1)
            sections.append({"method": method, "model": "?", "step": None, "ops": {}})
            in_ops = False
            continue
        if method is None:
            continue
        if line.startswith("{"):
            try:
                sections[-1]["model"] = json.loads(line).get("model", "?")
            except ValueError:
                pass
            continue
        out = {method: sections[-1]}
        m = re.match(r"^profile over \d+ steps: ([0-9.]+) ms per step", line)
        if m:
            out[method]["step"] = float(m.group(1))
            continue
        if line.startswith("op (outermost kernel call)"):
            in_ops = True
            continue
        if line.startswith("phase"):
            in_ops = False
            continue
        if in_ops:
            f = line.split()
            if not f:
                continue
            if f[0] == "(outside":
                in_ops = False
                continue
            try:
                ms, calls = float(f[1]), float(f[3])
                gbs = float(f[5]) if len(f) >= 6 else None
            except (ValueError, IndexError):
                continue
            out[method]["ops"][f[0]] = (ms, calls, gbs)
    return {f"{sec['model']} {sec['method']}": sec for sec in sections}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    old, new = parse(a.old), parse(a.new)
    for method, n in new.items():
        o = old.get(method)
        if not o:
            continue
        os_, ns = o["step"], n["step"]
        print(f"\n== {method}: {os_:.2f} -> {ns:.2f} ms per step ({ns / os_:.2f}x) ==")
        print(f"{'op':32} {'ms before':>10} {'ms after':>9} {'change':>8} {'calls':>13} {'GB/s after':>10}")
        names = sorted(set(o["ops"]) | set(n["ops"]),
                       key=lambda k: -max(o["ops"].get(k, (0,))[0], n["ops"].get(k, (0,))[0]))
        for k in names[:a.top]:
            ob = o["ops"].get(k, (0.0, 0.0, None))
            nb = n["ops"].get(k, (0.0, 0.0, None))
            gbs = f"{nb[2]:10.0f}" if nb[2] is not None else f"{'':10}"
            print(f"{k:32} {ob[0]:10.3f} {nb[0]:9.3f} {nb[0] - ob[0]:+8.3f} {ob[1]:6.0f}->{nb[1]:<6.0f} {gbs}")
        rest_o = sum(v[0] for kk, v in o["ops"].items() if kk not in names[:a.top])
        rest_n = sum(v[0] for kk, v in n["ops"].items() if kk not in names[:a.top])
        print(f"{'(other ops)':32} {rest_o:10.3f} {rest_n:9.3f} {rest_n - rest_o:+8.3f}")


if __name__ == "__main__":
    main()
