#!/usr/bin/env python3
"""Collects runs/lowrank/KEY/report.json (written by `squeeze compress`: the factorized
model and its original measured in one process, speeds interleaved) and, for fine-tuned
keys, runs/lowrank/KEY-oneshot/report.json (the same factorization before fine-tuning) into
results/lowrank.json, one key per experiment, merged with the keys already there.
Usage: scripts/lowrank_results.py KEY..."""
import json
import os
import sys


def finetune_seconds(passes):
    """Seconds spent fine-tuning inside the recipe."""
    total = 0.0
    for p in passes:
        d = p["details"]
        logs = d.get("finetune", []) if isinstance(d, dict) else d if p["pass"] == "finetune" else []
        total += sum(e.get("seconds", 0.0) for e in logs if isinstance(e, dict))
    return total


def entry(key):
    d = f"runs/lowrank/{key}"
    rep = json.load(open(f"{d}/report.json"))
    measured = json.load(open(f"{d}/metrics.json")).get("measured", {})
    b, a, passes = rep["before"], rep["after"], rep["passes"]
    metric = "spearman" if a.get("spearman") is not None else "accuracy"
    thr = "throughput_b32" if metric == "spearman" else "throughput_b256"
    before_ft = a[metric]
    if os.path.exists(f"{d}-oneshot/report.json"):
        before_ft = json.load(open(f"{d}-oneshot/report.json"))["after"][metric]
    lr = next(p["details"] for p in passes if p["pass"] == "low_rank")
    out = {
        metric: a[metric],
        "baseline": b[metric],
        "accuracy_before_finetune": before_ft,
        "factorized_params_before": lr["params_before"],
        "factorized_params_after": lr["params_after"],
        "ranks": {l["layer"]: l["rank"] for l in lr["layers"]},
        "params": a["params"],
        "baseline_params": b["params"],
        "flops": a["flops"],
        "baseline_flops": b["flops"],
        "size_bytes": a["size_bytes"],
        "baseline_size_bytes": b["size_bytes"],
        "latency_ms_b1": a["latency_ms_b1"],
        "baseline_latency_ms_b1": b["latency_ms_b1"],
        "throughput": a[thr],
        "baseline_throughput": b[thr],
        "throughput_batch": 32 if metric == "spearman" else 256,
        "finetune_seconds": round(finetune_seconds(passes), 1),
        "passes": [f'{p["pass"]}: {p["label"]}' for p in passes],
        "cpu": measured.get("machine"),
        "command": rep["command"],
        "measured_by": "the same squeeze compress run: both models in one process, "
                       "speeds interleaved over its --rounds (median)",
    }
    secs = f"{d}.seconds"
    if os.path.exists(secs):
        out["wall_seconds"] = int(open(secs).read().strip())
    return out


def main(keys):
    path = "results/lowrank.json"
    out = json.load(open(path)) if os.path.exists(path) else {}
    for k in keys:
        if os.path.exists(f"runs/lowrank/{k}/report.json"):
            out[k] = entry(k)
        else:
            print(f"lowrank_results: no report for {k}", file=sys.stderr)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(sorted(out.items())), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1:])
