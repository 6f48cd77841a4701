"""Collects runs/<arch>/metrics.json (+ the training command from train.json) into
results/baselines.json, keeping entries of archs not trained here.
Usage: python3 scripts/collect_baselines.py [arch=RUN_DIR ...]   (default RUN_DIR: runs/<arch>)"""
import json, os, sys

ARCHS = ["mlp", "lenet5", "vgg", "resnet", "densenet"]
KEYS = ["accuracy", "params", "flops", "size_bytes", "latency_ms_b1", "throughput_b256", "peak_rss_bytes"]
dirs = {a: f"runs/{a}" for a in ARCHS}
for arg in sys.argv[1:]:
    a, _, d = arg.partition("=")
    if a not in dirs or not d:
        sys.exit(f"collect_baselines: bad argument {arg!r} (expected ARCH=RUN_DIR, ARCH one of {ARCHS})")
    dirs[a] = d
path = "results/baselines.json"
out = json.load(open(path)) if os.path.exists(path) else {}
for a in ARCHS:
    m, t = f"{dirs[a]}/metrics.json", f"{dirs[a]}/train.json"
    if not (os.path.exists(m) and os.path.exists(t)):
        continue
    metrics, train = json.load(open(m)), json.load(open(t))
    entry = {k: metrics[k] for k in KEYS}
    entry["epochs"] = train["config"]["epochs"]
    entry["best_valid_accuracy"] = max(h["valid_accuracy"] for h in train["history"])
    entry["command"] = train["command"].replace("./target/release/squeeze", "squeeze")
    out[a] = entry
os.makedirs("results", exist_ok=True)
json.dump(out, open(path, "w"), indent=2)
print(json.dumps(out, indent=2))
