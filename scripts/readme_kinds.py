"""The README's table of issue 30's speed and memory targets, one column per machine kind.

The headline files `results/minilm.json` and `results/quant.json` hold the latest run on
the project's main machine; `results/kinds/<kind>/` holds the same two files, written by
the same `squeeze bench text` / `squeeze bench quant` commands with `--out` pointed there,
for every other machine kind a session could measure on. Each column names the CPU its
files record; a target no run of that kind measured is shown as a dash.
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (label, file, key, field, the test on the value, how to show it)
TARGETS = [
    ("MiniLM int8 batch-1 time vs ONNX Runtime's best int8 (≤ 0.83×, i.e. ≥ 1.2× as fast)",
     "minilm", "int8-dynamic", "latency_ratio_vs_ort_int8", lambda v: v <= 1 / 1.2, "{:.2f}×"),
    ("MiniLM int8 batch-32 throughput vs ONNX Runtime's best int8 (≥ 1.2×)",
     "minilm", "int8-dynamic", "throughput_ratio_vs_ort_int8", lambda v: v >= 1.2, "{:.2f}×"),
    ("MiniLM int8 cosine to f32 (≥ 0.998)",
     "minilm", "int8-dynamic", "cosine_to_f32", lambda v: v >= 0.998, "{:.4f}"),
    ("MiniLM int8 STS-B Δ vs f32, pt (within 0.1)",
     "minilm", "int8-dynamic", "spearman_delta", lambda v: abs(v) <= 0.1, "{:+.2f}"),
    ("MiniLM f32 batch-32 throughput vs ONNX Runtime f32 (≥ 1.1×)",
     "minilm", "f32", "throughput_ratio_vs_ort_f32", lambda v: v >= 1.1, "{:.2f}×"),
    ("MiniLM int4-GPTQ-g64 batch-1 time vs our f32 (≤ 0.7×)",
     "minilm", "int4-gptq-g64", "latency_ratio_vs_f32", lambda v: v <= 0.7, "{:.2f}×"),
    ("MiniLM int4-GPTQ-g64 cosine to f32 (≥ 0.975)",
     "minilm", "int4-gptq-g64", "cosine_to_f32", lambda v: v >= 0.975, "{:.4f}"),
    ("`embed` peak RSS over the f32 weights file, 100 sentences (≤ 40 MB)",
     "minilm", "f32", "embed_over_mb", lambda v: v <= 40, "{:.1f} MB"),
    ("`embed` peak RSS over the int8 weights file, 100 sentences (≤ 40 MB)",
     "minilm", "int8-dynamic", "embed_over_mb", lambda v: v <= 40, "{:.1f} MB"),
]
for model in ("vgg", "lenet5"):
    TARGETS += [
        (f"{model} static int8 batch-1 time vs PyTorch int8 (≤ 1×)", "quant", f"{model}-int8-static",
         "latency_ratio_vs_pytorch_int8", lambda v: v <= 1, "{:.2f}×"),
        (f"{model} static int8 batch-256 throughput vs PyTorch int8 (≥ 1×)", "quant", f"{model}-int8-static",
         "throughput_ratio_vs_pytorch_int8", lambda v: v >= 1, "{:.2f}×"),
    ]


def value(files, name, key, field):
    """One target's number from a kind's files, or None where that run did not measure it."""
    e = files.get(name, {}).get(key)
    if e is None:
        return None
    if field == "spearman_delta":
        f32 = files[name].get("f32")
        return e["spearman"] - f32["spearman"] if f32 else None
    if field == "embed_over_mb":
        v = e.get("embed_peak_rss_over_weights_bytes")
        return v / 1e6 if v is not None else None
    return e.get(field)


def kinds():
    """(label, {file name: parsed json}) for the headline files, then each results/kinds/<kind>/."""
    def files(folder):
        return {n: json.loads((folder / f"{n}.json").read_text())
                for n in ("minilm", "quant") if (folder / f"{n}.json").exists()}
    out = [("main machine (results/)", files(ROOT / "results"))]
    base = ROOT / "results" / "kinds"
    if base.exists():
        out += [(f"results/kinds/{d.name}/", files(d)) for d in sorted(base.iterdir()) if d.is_dir()]
    return out


def spread(files, name, key, field, fmt):
    """ " (lo–hi)": the range of a ratio's per-round values, where the run recorded one."""
    r = (files.get(name, {}).get(key) or {}).get(field + "_range")
    if not r or None in r:
        return ""
    return f" ({fmt.format(r[0]).rstrip('×')}–{fmt.format(r[1])})"


def cpu(files):
    """The CPU the kind's int8 MiniLM entry names (that of its vgg entry if no MiniLM run)."""
    for name, key in (("minilm", "int8-dynamic"), ("quant", "vgg-int8-static")):
        e = files.get(name, {}).get(key)
        if e and e.get("cpu"):
            return e["cpu"]
    return "–"


def text_turns(files):
    """How the kind's MiniLM run took turns between its encoders for the batch-1 timing, read
    from its `timing` record: "runs" (short runs after an untimed sentence, the encoder's
    weights warm as the peers' are), "sentences" (the older rule: one sentence each) or None."""
    t = (files.get("minilm", {}).get("int8-dynamic") or {}).get("timing") or ""
    if "in runs of" in t:
        return "runs"
    if "sentence by sentence" in t:
        return "sentences"
    return None


def turns_note(cols):
    """Which columns' MiniLM batch-1 times were taken with which turns."""
    by = {"runs": [], "sentences": []}
    for label, f in cols:
        t = text_turns(f)
        if t:
            by[t].append(label)
    parts = []
    if by["runs"]:
        parts.append(", ".join(by["runs"]) + ": our encoders take turns in short runs of "
                     "sentences, each run after an untimed sentence, so that each is timed with its "
                     "weights in the caches, as the peers time their sentences one after another")
    if by["sentences"]:
        parts.append(", ".join(by["sentences"]) + ": the older rule, one sentence per turn, which "
                     "timed each of our encoders after the other encoders of the run had evicted its "
                     "weights while the peers' stayed cached (docs/profiling.md, \"Cold or warm "
                     "weights in the batch-1 timing\")")
    return (" MiniLM batch-1 times: " + "; ".join(parts) + ".") if parts else ""


def block(table):
    cols = kinds()
    header = ["target (issue 30)"] + [f"{label}: {cpu(f)}" for label, f in cols]
    rows = []
    for label, name, key, field, ok, fmt in TARGETS:
        cells = []
        for _, f in cols:
            v = value(f, name, key, field)
            cells.append("–" if v is None else fmt.format(v) + spread(f, name, key, field, fmt)
                         + (" ✓" if ok(v) else " ✗"))
        rows.append([label] + cells)
    met = [sum(1 for r in rows if r[i + 1].endswith("✓")) for i in range(len(cols))]
    seen = [sum(1 for r in rows if r[i + 1] != "–") for i in range(len(cols))]
    tally = "; ".join(f"{label}: {m} of {s} met" for (label, _), m, s in zip(cols, met, seen))
    return (table(header, rows) + f"\n\nTargets met per column ({tally}). Ratios are the medians of "
            "each run's per-round ratios, their range over the rounds in brackets: a target met by "
            "the median but not by every round is within the machine's variation, and another run of "
            "the same command can land on the other side of it. The runs are `squeeze bench text` and `squeeze bench quant` "
            "as in `scripts/quant-experiments.sh`, whose `--out` names the folder (each entry's "
            "`command` and `measured_by` say so)." + turns_note(cols))
