#!/usr/bin/env python3
"""Collects runs/prune/KEY/report.json (written by `squeeze compress`, both models measured
in one process) into results/prune.json, one key per experiment, merged with the keys
already there (e.g. sparse-crossover from `squeeze bench sparse`).
Usage: scripts/prune_results.py KEY..."""
import json
import os
import sys

PRUNERS = {"magnitude", "obd", "wanda", "sparsegpt"}


def entry(key):
    rep = json.load(open(f"runs/prune/{key}/report.json"))
    b, a = rep["before"], rep["after"]
    metric = "spearman" if a.get("spearman") is not None else "accuracy"
    sparsity = next(
        (p["details"]["sparsity"] for p in rep["passes"] if p["pass"] in PRUNERS), None
    )
    thr = "throughput_b32" if metric == "spearman" else "throughput_b256"
    return {
        metric: a[metric],
        "baseline": b[metric],
        "sparsity": sparsity,
        "compression_ratio": b["size_bytes"] / a["size_bytes"],
        "params": a["params"],
        "nonzero_params": a["nonzero_params"],
        "size_bytes": a["size_bytes"],
        "baseline_size_bytes": b["size_bytes"],
        "flops": a["flops"],
        "baseline_flops": b["flops"],
        "latency_ms_b1": a["latency_ms_b1"],
        "baseline_latency_ms_b1": b["latency_ms_b1"],
        thr: a[thr],
        "baseline_" + thr: b[thr],
        "peak_rss_bytes": a["peak_rss_bytes"],
        "baseline_peak_rss_bytes": b["peak_rss_bytes"],
        "passes": [f'{p["pass"]}: {p["label"]}' for p in rep["passes"]],
        "command": rep["command"],
    }


def main(keys):
    path = "results/prune.json"
    out = json.load(open(path)) if os.path.exists(path) else {}
    for k in keys:
        out[k] = entry(k)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1:])
