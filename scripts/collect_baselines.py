"""Collects the test metrics of finished training runs (RUN_DIR/metrics.json, with the
training command from RUN_DIR/train.json) into results/baselines.json, keeping the other
archs' entries. Usage: python3 scripts/collect_baselines.py ARCH=RUN_DIR [ARCH=RUN_DIR ...]"""
import json, os, sys

ARCHS = ["mlp", "lenet5", "vgg", "resnet", "densenet"]
KEYS = ["accuracy", "params", "flops", "size_bytes", "latency_ms_b1", "throughput_b256", "peak_rss_bytes"]
dirs = {}
for arg in sys.argv[1:]:
    a, _, d = arg.partition("=")
    if a not in ARCHS or not d:
        sys.exit(f"collect_baselines: bad argument {arg!r} (expected ARCH=RUN_DIR, ARCH one of {ARCHS})")
    dirs[a] = d
if not dirs:
    sys.exit(__doc__)
path = "results/baselines.json"
out = json.load(open(path)) if os.path.exists(path) else {}
for a, d in dirs.items():
    m, t = f"{d}/metrics.json", f"{d}/train.json"
    if not (os.path.exists(m) and os.path.exists(t)):
        sys.exit(f"collect_baselines: {d} holds no finished run (metrics.json + train.json)")
    metrics, train = json.load(open(m)), json.load(open(t))
    entry = {k: metrics[k] for k in KEYS}
    entry["epochs"] = train["config"]["epochs"]
    entry["best_valid_accuracy"] = max(h["valid_accuracy"] for h in train["history"])
    # a resumed run continues bit-exactly, so the command is the one that started it
    cmd = train["command"].replace("./target/release/squeeze", "squeeze").replace(" --resume", "")
    entry["command"] = cmd
    out[a] = entry
os.makedirs("results", exist_ok=True)
json.dump(out, open(path, "w"), indent=2)
print(json.dumps(out, indent=2))
