#!/usr/bin/env python3
"""Collects runs/lowrank/KEY/report.json (written by `squeeze compress`: the factorized
model and its original measured in one process, speeds interleaved) and, for fine-tuned
keys, runs/lowrank/KEY-oneshot/report.json (the same factorization before fine-tuning) into
results/lowrank.json, one key per experiment, merged with the keys already there.
Usage: scripts/lowrank_results.py KEY..."""
import hashlib
import json
import os
import sys
import tomllib

from structured_results import against, finetune_seconds, merge_into


def entry(key):
    d = f"runs/lowrank/{key}"
    rep = json.load(open(f"{d}/report.json"))
    measured = json.load(open(f"{d}/metrics.json")).get("measured", {})
    b, a, passes = rep["before"], rep["after"], rep["passes"]
    metric = "spearman" if a.get("spearman") is not None else "accuracy"
    before_ft = a[metric]
    unrecovered = key[: -len("-recovered")] if key.endswith("-recovered") else None
    if os.path.exists(f"{d}-oneshot/report.json"):
        before_ft = json.load(open(f"{d}-oneshot/report.json"))["after"][metric]
    elif unrecovered and os.path.exists(f"runs/lowrank/{unrecovered}/report.json"):
        before_ft = json.load(open(f"runs/lowrank/{unrecovered}/report.json"))["after"][metric]
    # a recipe may factorize its layers in several low_rank passes (one per layer)
    lrs = [p["details"] for p in passes if p["pass"] == "low_rank"]
    measured_by = ("the same squeeze compress run: both models in one process, "
                   "speeds interleaved over its --rounds (median)")
    pair = "runs/lowrank/vgg-factorized.against-original.json"
    if key in ("vgg-svd-50", "vgg-spatial-svd-50") and os.path.exists(pair):
        # unfolding and spatial measured side by side with the original in one run
        run = json.load(open(pair))
        b = run["models"][0]["metrics"]
        a = next(m["metrics"] for m in run["models"] if m["model"].rstrip("/").endswith(key))
        measured = run["measured"]
        measured_by = run["command"]
    out = {
        metric: a[metric],
        "baseline": b[metric],
        "accuracy_before_finetune": before_ft,
        "factorized_params_before": sum(lr["params_before"] for lr in lrs),
        "factorized_params_after": sum(lr["params_after"] for lr in lrs),
        "ranks": {l["layer"]: l["rank"] for lr in lrs for l in lr["layers"]},
        **against(a, b, metric),
        "finetune_seconds": round(finetune_seconds(passes), 1),
        "passes": [f'{p["pass"]}: {p["label"]}' for p in passes],
        "cpu": measured.get("machine"),
        "command": rep["command"],
        "measured_by": measured_by,
    }
    if key in ALLOCATIONS:
        # the per-layer fractions kept, from its recipe, and the uniform candidate's recipe
        # fine-tuned on the same machine beside it
        recipe = tomllib.load(open(f"recipes/{key}.toml", "rb"))
        out["ratios"] = {l: p["keep"] for p in recipe["passes"] if p["type"] == "low_rank"
                         for l in p["layers"]}
        uniform = entry(f"{key}-uniform")
        del uniform["accuracy_before_finetune"]  # not made for it (no oneshot run)
        out["uniform_same_machine"] = uniform
        # the same recipe inside the search: a seeded fine-tuning repeats to the bit
        made = [f"runs/lowrank/{key}-uniform/model.safetensors", f"{SEARCH}/uniform/model.safetensors"]
        if all(os.path.exists(f) for f in made):
            digests = {hashlib.sha256(open(f, "rb").read()).hexdigest() for f in made}
            out["uniform_weights_equal_search_uniform"] = len(digests) == 1
    secs = f"{d}.seconds"
    if os.path.exists(secs):
        out["wall_seconds"] = int(open(secs).read().strip())
    return out


SEARCH = "runs/lowrank/vgg-search-flops-33"
# per-layer allocations at the search's budget other than its own, each fine-tuned beside
# the uniform candidate's recipe on the same machine
ALLOCATIONS = ("vgg-knapsack-flops-33", "vgg-late-flops-33")


def search_entries():
    """vgg-search-flops-33 and vgg-uniform-flops-33: both candidates of one `squeeze search`
    run (equal fine-tuning), measured against zoo/vgg by one `squeeze report` run; their
    accuracy before fine-tuning from their recipes without the fine-tuning pass."""
    rep = json.load(open(f"{SEARCH}/search.json"))
    run = json.load(open(f"{SEARCH}.against-original.json"))
    base = run["models"][0]["metrics"]
    out = {}
    for name, key in (("searched", "vgg-search-flops-33"), ("uniform", "vgg-uniform-flops-33")):
        cand = next(c for c in rep["candidates"] if c["name"] == name)
        a = next(m["metrics"] for m in run["models"] if m["model"].endswith(f"/{name}"))
        oneshot = json.load(open(f"{SEARCH}-{name}-oneshot/report.json"))["after"]["accuracy"]
        seed1 = f"{SEARCH}-{name}-seed1/report.json"
        e = {
            "accuracy": a["accuracy"],
            "baseline": base["accuracy"],
            "accuracy_before_finetune": oneshot,
            "held_out_accuracy": cand["score"],
            "predicted_loss": cand["predicted_loss"],
            "ratios": dict(cand["choice"]),
            "budget": rep["budget"],
            "meets_budget": cand["meets_budget"],
            "params": a["params"],
            "baseline_params": base["params"],
            "flops": a["flops"],
            "baseline_flops": base["flops"],
            "size_bytes": a["size_bytes"],
            "baseline_size_bytes": base["size_bytes"],
            "latency_ms_b1": a["latency_ms_b1"],
            "baseline_latency_ms_b1": base["latency_ms_b1"],
            "throughput": a["throughput_b256"],
            "baseline_throughput": base["throughput_b256"],
            "throughput_batch": 256,
            "finetune_seconds": round(cand["seconds"], 1),
            "cpu": run["measured"]["machine"],
            "command": rep["command"],
            "recipe": f"recipes/{key}.toml (written by the search as {SEARCH}/{name}/recipe.toml)",
            "measured_by": run["command"],
        }
        if os.path.exists(seed1):
            # the same recipe, fine-tuning seed 1 (its command: the key's recipe with
            # `seed = 1`, through squeeze compress)
            e["accuracy_seed1"] = json.load(open(seed1))["after"]["accuracy"]
        if name == "searched":
            e["search_wall_s"] = round(rep["search_wall_s"], 1)
            e["scan_seconds"] = round(rep["scan_seconds"], 1)
        out[key] = e
    return out


def main(keys):
    new = {}
    for k in keys:
        if k == "vgg-search-flops-33":
            if os.path.exists(f"{SEARCH}.against-original.json"):
                new.update(search_entries())
            continue
        if os.path.exists(f"runs/lowrank/{k}/report.json"):
            new[k] = entry(k)
        else:
            print(f"lowrank_results: no report for {k}", file=sys.stderr)
    merge_into("results/lowrank.json", new)


if __name__ == "__main__":
    main(sys.argv[1:])
