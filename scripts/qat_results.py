#!/usr/bin/env python3
"""Adds to each QAT key of results/quant.json (written by `squeeze bench quant`) what
the compress run recorded in runs/qat/KEY/report.json — the simulated model's test
accuracy just before materializing beside the integer model's, the trained layers,
the fine-tuning seconds — and the stored size of the quantized layers' weights against
their f32 size (codes or packed levels plus scales, read from the safetensors header).
Usage: scripts/qat_results.py KEY..."""
import json
import struct
import sys

from structured_results import finetune_seconds, merge_into

RESULTS = "results/quant.json"
WEIGHT_PARTS = ("weight_q", "weight_bits", "weight_scale")


def tensor_bytes(path):
    """Name → stored bytes of every tensor of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["data_offsets"][1] - v["data_offsets"][0]
            for k, v in header.items() if k != "__metadata__"}


def layer_compression(run_dir, layers):
    """Stored bytes of the quantized layers' weights (codes or levels, and scales) and
    their f32 bytes (4 per weight of the logical shape in model.json)."""
    sizes = tensor_bytes(f"{run_dir}/model.safetensors")
    table = json.load(open(f"{run_dir}/model.json"))["tensors"]
    stored = f32 = 0
    for layer in layers:
        for part in WEIGHT_PARTS:
            stored += sizes.get(f"{layer}.{part}", 0)
        packed = next(t for p in ("weight_q", "weight_bits")
                      if (t := table.get(f"{layer}.{p}")) is not None)
        count = 1
        for d in packed["shape"]:
            count *= d
        f32 += 4 * count
    return stored, f32


def extra(key):
    d = f"runs/qat/{key}"
    rep = json.load(open(f"{d}/report.json"))
    qat = next(p["details"] for p in rep["passes"] if p["pass"] == "qat")
    stored, f32 = layer_compression(d, qat["layers"])
    sim, mat = qat.get("simulated_test_accuracy"), rep["after"]["accuracy"]
    return {
        "weights": qat["weights"],
        "bits": qat["bits"],
        "act_bits": qat["act_bits"],
        "layers": qat["layers"],
        "simulated_accuracy": None if sim is None else round(100 * sim, 2),
        "materialized_minus_simulated_pt": None if sim is None else round(100 * (mat - sim), 3),
        "quantized_layers_bytes": stored,
        "quantized_layers_f32_bytes": f32,
        "quantized_layers_compression": round(f32 / stored, 2),
        "finetune_seconds": round(finetune_seconds(rep["passes"]) + sum(
            e.get("seconds", 0.0) for e in qat.get("history", [])), 1),
    }


def main(keys):
    results = json.load(open(RESULTS))
    new = {}
    for k in keys:
        if k not in results:
            sys.exit(f"{RESULTS} has no `{k}`: run scripts/qat-experiments.sh bench {k} first")
        new[k] = {**results[k], **extra(k)}
    merge_into(RESULTS, new)


if __name__ == "__main__":
    main(sys.argv[1:])
