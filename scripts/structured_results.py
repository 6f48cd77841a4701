#!/usr/bin/env python3
"""Collects runs/structured/KEY/report.json (written by `squeeze compress`: the pruned model
and its original measured in one process, speeds interleaved) into results/structured.json,
one key per experiment, merged with the keys already there.
Usage: scripts/structured_results.py KEY..."""
import json
import os
import sys

PRUNERS = {"channel_prune"}


def finetune_seconds(passes):
    """Seconds spent fine-tuning inside the recipe (recovery, iterative rounds)."""
    total = 0.0
    for p in passes:
        for e in p["details"].get("finetune", []) if isinstance(p["details"], dict) else []:
            total += e.get("seconds", 0.0)
        if p["pass"] == "finetune" and isinstance(p["details"], list):
            total += sum(e.get("seconds", 0.0) for e in p["details"])
    return total


SLIM = "zoo/vgg-slim"


def stacked(d, rep):
    """The quantized slimmed model: made from zoo/vgg-slim, measured against zoo/vgg by
    `squeeze report` in one run; its pruning is the one recorded in zoo/vgg-slim."""
    against = json.load(open(f"{d}.against-original.json"))
    b, a = (m["metrics"] for m in against["models"])
    slim = json.load(open(f"{SLIM}/report.json"))
    passes = slim["passes"] + rep["passes"]
    return b, a, passes, against["measured"], against["command"], slim["command"]


def against(a, b, metric):
    """A compressed model's costs `a` beside its original's `b`: parameters, FLOPs, file
    size, batch-1 latency and throughput (batch 32 for text encoders, 256 for images)."""
    thr = "throughput_b32" if metric == "spearman" else "throughput_b256"
    return {
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
    }


def entry(key):
    d = f"runs/structured/{key}"
    rep = json.load(open(f"{d}/report.json"))
    measured = json.load(open(f"{d}/metrics.json")).get("measured", {})
    b, a, passes = rep["before"], rep["after"], rep["passes"]
    measured_by = ("the same squeeze compress run: both models in one process, "
                   "speeds interleaved over its --rounds (median)")
    made = rep["command"]
    if os.path.exists(f"{d}.against-original.json"):
        b, a, passes, measured, measured_by, first = stacked(d, rep)
        made = f"{first}, copied to {SLIM}; then {rep['command']}"
    metric = "spearman" if a.get("spearman") is not None else "accuracy"
    prune = next(p["details"] for p in passes if p["pass"] in PRUNERS)
    out = {
        metric: a[metric],
        "baseline": b[metric],
        "channels_removed": prune["channels_removed"],
        "pruned_layer_params_removed": 1 - prune["group_params_after"] / prune["group_params_before"],
        **against(a, b, metric),
        "finetune_seconds": round(finetune_seconds(passes), 1),
        "passes": [f'{p["pass"]}: {p["label"]}' for p in passes],
        "cpu": measured.get("machine"),
        "command": made,
        "measured_by": measured_by,
    }
    secs = f"{d}.seconds"
    if os.path.exists(secs):
        out["wall_seconds"] = int(open(secs).read().strip())
    return out


def merge_into(path, new):
    """Writes the entries `new` into the results file `path` (keys already there and not
    in `new` are kept), sorted by key, through a temporary name."""
    out = json.load(open(path)) if os.path.exists(path) else {}
    out.update(new)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(sorted(out.items())), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(keys):
    new = {}
    for k in keys:
        if os.path.exists(f"runs/structured/{k}/report.json"):
            new[k] = entry(k)
        else:
            print(f"structured_results: no report for {k}", file=sys.stderr)
    merge_into("results/structured.json", new)


if __name__ == "__main__":
    main(sys.argv[1:])
