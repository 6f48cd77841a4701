#!/usr/bin/env python3
"""Collects the measurements of scripts/check-onnx.sh (in DIR, ROUNDS timing rounds) into
the JSON of results/onnx.json, printed on stdout.
  usage: onnx_results.py DIR ROUNDS
         onnx_results.py DIR ROUNDS --images KEY... (results/onnx.json with only those
         image entries measured anew, on this machine, the rest kept as they were)"""
import json
import statistics
import sys

d, rounds = sys.argv[1], int(sys.argv[2])
ONLY = sys.argv[4:] if sys.argv[3:4] == ["--images"] else None
MEASURED_BY = "bash scripts/check-onnx.sh PYTHON"
MADE_BY = {
    "vgg-int8-static": "squeeze compress zoo/vgg --recipe recipes/vgg-int8-static.toml --out runs/quant/vgg-int8-static",
    "minilm-int8": "squeeze compress models/all-MiniLM-L6-v2 --recipe recipes/minilm-int8-dynamic.toml --out runs/quant/minilm-int8-dynamic",
    "minilm-int4": "squeeze compress models/all-MiniLM-L6-v2 --recipe recipes/minilm-int4-gptq-g64.toml --out runs/quant/minilm-int4-gptq-g64",
    "minilm-f32": "the pretrained all-MiniLM-L6-v2 (scripts/setup.sh fetches it)",
}
SOURCE = {
    "vgg": "zoo/vgg", "vgg-int8-static": "runs/quant/vgg-int8-static", "vgg-slim": "zoo/vgg-slim",
    "vgg-lowrank": "zoo/vgg-lowrank", "vgg-binary": "zoo/vgg-binary", "lenet5": "zoo/lenet5",
    "minilm-f32": "models/all-MiniLM-L6-v2", "minilm-int8": "runs/quant/minilm-int8-dynamic",
    "minilm-int4": "runs/quant/minilm-int4-gptq-g64",
}


def load(name):
    with open(f"{d}/{name}") as f:
        return json.load(f)


def spread(v):
    return [min(v), max(v)]


def this_cpu():
    """The CPU as `squeeze bench` records it: lscpu's model name, family and model."""
    import subprocess
    info = dict(l.split(":", 1) for l in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ":" in l)
    get = lambda k: info.get(k, "?").strip()
    return f"{get('Model name')} (family {get('CPU family')}, model {get('Model')})"


CPU = this_cpu() if ONLY else None


def export_entry(key):
    e = load(f"{key}/export.json")
    src = SOURCE[key]
    return {
        "cpu": CPU or load("text-bench.json")["f32"]["cpu"],
        "command": f"squeeze export {src} --format onnx --out {d}/{key}",
        "model_made_by": MADE_BY.get(key, f"the committed zoo model {src} (zoo/README.md says how it was made)"),
        "measured_by": MEASURED_BY,
        "onnx_bytes": e["bytes"],
        "notes": e["notes"],
    }


def image(key):
    ours = [load(f"{key}.ours.{r}.json") for r in range(1, rounds + 1)]
    ort = [load(f"{key}.ort.{r}.json") for r in range(1, rounds + 1)]
    lat = [o["latency_ms_b1"] / p["latency_ms_b1"] for o, p in zip(ours, ort)]
    thr = [o["throughput_b256"] / p["throughput"] for o, p in zip(ours, ort)]
    acc_ours, acc_ort = ours[0]["accuracy"], load(f"{key}.ort-quality.json")["accuracy"]
    return {
        **export_entry(key),
        "accuracy_squeeze": acc_ours,
        "accuracy_onnxruntime": acc_ort,
        "accuracy_delta_pt": round((acc_ort - acc_ours) * 100, 3),
        "squeeze_latency_ms_b1": statistics.median(o["latency_ms_b1"] for o in ours),
        "onnxruntime_latency_ms_b1": statistics.median(p["latency_ms_b1"] for p in ort),
        "squeeze_throughput_b256": statistics.median(o["throughput_b256"] for o in ours),
        "onnxruntime_throughput_b256": statistics.median(p["throughput"] for p in ort),
        # squeeze over ONNX Runtime, per round (< 1 latency / > 1 throughput: squeeze ahead)
        "latency_ratio_squeeze_over_ort": statistics.median(lat),
        "latency_ratio_squeeze_over_ort_range": spread(lat),
        "throughput_ratio_squeeze_over_ort": statistics.median(thr),
        "throughput_ratio_squeeze_over_ort_range": spread(thr),
    }


def text(key, bench_key, peer, f32_spearman):
    b = load("text-bench.json")[bench_key]
    p = b["peer"]
    q = load(f"{key}.ort-quality.json")
    out = {
        **export_entry(key),
        "spearman_squeeze": b["spearman"],
        "spearman_onnxruntime": q["spearman"],
        "spearman_onnxruntime_minus_f32_export": round(q["spearman"] - f32_spearman, 3),
        "cosine_to_squeeze_mean": q["cosine_to_squeeze_mean"],
        "cosine_to_squeeze_min": q["cosine_to_squeeze_min"],
        "squeeze_latency_ms_b1": b["latency_ms_b1"],
        "onnxruntime_latency_ms_b1": p[f"onnx_{peer}_latency_ms_b1"],
        "squeeze_throughput_b32": b["throughput_b32"],
        "onnxruntime_throughput_b32": p[f"onnx_{peer}_throughput_b32"],
        "cosine_to_ort_f32_of_pytorch_export": p.get(f"onnx_{peer}_cosine_to_f32"),
    }
    if peer == "int8":
        # ONNX Runtime against ONNX Runtime: our int8 file over the best of its own
        # quantizer's int8 files, round by round in one process
        r = p["rounds"]
        lat = [x["onnx_int8_latency_ms_b1"] / x["ort_best_int8_latency_ms_b1"] for x in r]
        thr = [x["onnx_int8_throughput_b32"] / x["ort_best_int8_throughput_b32"] for x in r]
        for v in ["ort_int8", "ort_int8_opt_pc"]:
            lv = [x["onnx_int8_latency_ms_b1"] / x[f"{v}_latency_ms_b1"] for x in r]
            tv = [x["onnx_int8_throughput_b32"] / x[f"{v}_throughput_b32"] for x in r]
            out[f"latency_ratio_vs_{v}"] = statistics.median(lv)
            out[f"latency_ratio_vs_{v}_range"] = spread(lv)
            out[f"throughput_ratio_vs_{v}"] = statistics.median(tv)
            out[f"throughput_ratio_vs_{v}_range"] = spread(tv)
        # how far one file's own batch-1 time moves between rounds: the noise floor
        own = [x["onnx_int8_latency_ms_b1"] for x in r]
        out["onnx_int8_latency_round_spread"] = max(own) / min(own)
        out.update({
            "ort_own_int8_latency_ms_b1": p["ort_best_int8_latency_ms_b1"],
            "ort_own_int8_throughput_b32": p["ort_best_int8_throughput_b32"],
            "latency_ratio_vs_ort_own_int8": statistics.median(lat),
            "latency_ratio_vs_ort_own_int8_range": spread(lat),
            "throughput_ratio_vs_ort_own_int8": statistics.median(thr),
            "throughput_ratio_vs_ort_own_int8_range": spread(thr),
        })
    return out


if ONLY:
    with open("results/onnx.json") as f:
        res = json.load(f)
    for k in ONLY:
        res["images"][k] = {**image(k), "rounds": rounds,
                            "measured_by": f"IMAGES='{' '.join(ONLY)}' {MEASURED_BY}"}
    json.dump(res, sys.stdout, indent=2)
    print()
    sys.exit(0)

bench = load("text-bench.json")
vs = load("int8-vs-ort.json")
vs.pop("per_round")
f32_sp = load("minilm-f32.ort-quality.json")["spearman"]
res = {
    "what": "squeeze export --format onnx, run by ONNX Runtime beside squeeze's own runtime: "
            "accuracy / STS-B dev and, for text, the cosine of each sentence's embedding to "
            "squeeze's; speed alternating round by round (images: squeeze eval then ONNX "
            "Runtime; text: one squeeze bench text run with the exports among its peers). "
            "Ratios are squeeze over ONNX Runtime (or our int8 file over ONNX Runtime's own "
            "int8 quantization of the PyTorch export); latency at batch 1, throughput at "
            "batch 256 (images) or 32 (text), 2 threads.",
    "cpu": bench["f32"]["cpu"],
    "onnxruntime": bench["f32"]["peer"].get("onnxruntime"),
    "rounds": rounds,
    "images": {k: image(k) for k in ["vgg", "vgg-int8-static", "vgg-slim", "vgg-lowrank", "vgg-binary", "lenet5"]},
    "text": {
        "minilm-f32": text("minilm-f32", "f32", "f32", f32_sp),
        "minilm-int8": text("minilm-int8", "int8-dynamic", "int8", f32_sp),
        "minilm-int4": text("minilm-int4", "int4-gptq-g64", "int4", f32_sp),
        # ONNX Runtime alone: our int8 file against each of its own int8 files
        "minilm-int8-vs-ort-own": {
            **vs,
            "command": f"squeeze export {SOURCE['minilm-int8']} --format onnx --out {d}/minilm-int8",
            "model_made_by": MADE_BY["minilm-int8"],
            "measured_by": MEASURED_BY + " (bench/peers/onnx_vs_ort.py)",
            "cpu": bench["f32"]["cpu"],
        },
    },
}
json.dump(res, sys.stdout, indent=2)
print()
