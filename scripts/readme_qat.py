"""The README's quantization-aware-training blocks, generated from results/quant.json
(called by readme_numbers.py, which passes its `load` and `table`). Rows appear for the
keys the file holds; targets are the issue's, stated beside what was measured."""

from readme_structured import _minus, _targets, _verdict

ROWS = (("vgg-ptq-int4", "`vgg`: post-training 4-bit weights and inputs (no training)"),
        ("vgg-qat-int4", "`vgg`: 4-bit weights and inputs, LSQ"),
        ("vgg-qat-w2a4", "`vgg`: 2-bit weights, 4-bit inputs, LSQ"),
        ("vgg-ternary", "`vgg`: ternary weights (TWN), 8-bit inputs"),
        ("vgg-binary", "`vgg`: binary weights (XNOR scaling), 8-bit inputs"),
        ("lenet5-qat-int4", "`lenet5`: 4-bit weights and inputs, LSQ"),
        ("mlp-qat-int4", "`mlp`: 4-bit weights and inputs, LSQ"))


def _pt(e):
    return e["accuracy"] - e["baseline"]


def block(load, table):
    q = load("quant")
    rows = []
    for key, what in ROWS:
        e = q.get(key)
        if not e or "quantized_layers_bytes" not in e:
            continue
        rows.append([f"`{key}`", what, f"{e['baseline']:.2f}%", f"{e['accuracy']:.2f}% ({_pt(e):+.2f})",
                     f"{e['materialized_minus_simulated_pt']:+.2f}",
                     f"{e['quantized_layers_compression']:.1f}×",
                     f"{e['baseline_size_bytes'] / 1e3:.0f} → {e['size_bytes'] / 1e3:.0f}",
                     f"{e['baseline_latency_ms_b1']:.3f} → {e['latency_ms_b1']:.3f}",
                     f"{e['baseline_throughput_b256']:,.0f} → {e['throughput_b256']:,.0f} "
                     f"({e['throughput_b256'] / e['baseline_throughput_b256']:.2f}×)",
                     f"{e['finetune_seconds'] / 60:.1f} min"])
    cpus = sorted({f"{e['cpu']}, {e['threads']} threads" for k, _ in ROWS
                   if (e := q.get(k)) and e.get("cpu")})
    head = ["key", "what", "f32", "quantized (pt)", "materialized − simulated (pt)",
            "quantized layers' weights vs f32", "file KB", "batch-1 ms", "batch-256 img/s", "training"]
    return _minus(table(head, rows) + "\n\nTest accuracy on Fashion-MNIST; speeds against the f32 "
                  "original in the same process, interleaved; the first and output layers stay f32. "
                  f"Measured on {', '.join(cpus)}.")


def notes(load):
    q = load("quant")
    out = []
    i, p = q.get("vgg-qat-int4"), q.get("vgg-ptq-int4")
    if i and p:
        out.append(f"- 4-bit QAT on `vgg`: {_pt(i):+.2f} pt against f32, post-training 4-bit of the same layers "
                   f"{_pt(p):+.2f} pt. Target (≤ 0.3 pt loss): {_verdict(_pt(i) >= -0.3)}.")
    w = q.get("vgg-qat-w2a4")
    if w:
        out.append(f"- 2-bit weights / 4-bit inputs on `vgg`: {_pt(w):+.2f} pt (reported, no target).")
    for key, loss, ratio in (("vgg-ternary", 1.0, 16), ("vgg-binary", 2.0, 25)):
        e = q.get(key)
        if e:
            checks = [(f"≤ {loss:.0f} pt loss", _pt(e) >= -loss),
                      (f"weights ≥ {ratio}× smaller", e["quantized_layers_compression"] >= ratio),
                      ("faster than f32 at batch 256", e["throughput_b256"] > e["baseline_throughput_b256"])]
            out.append(f"- `{key}`: {_pt(e):+.2f} pt; its convolutions' weights and scales "
                       f"{e['quantized_layers_compression']:.1f}× smaller than f32; batch 256 "
                       f"{e['throughput_b256'] / e['baseline_throughput_b256']:.2f}× the f32 throughput, batch 1 "
                       f"{e['latency_ms_b1'] / e['baseline_latency_ms_b1']:.2f}× its latency. Targets: "
                       f"{_targets(checks)}.")
    worst = max((abs(e["materialized_minus_simulated_pt"]) for k, _ in ROWS
                 if (e := q.get(k)) and e.get("materialized_minus_simulated_pt") is not None), default=None)
    if worst is not None:
        out.append(f"- Materialized against simulated test accuracy: at most {worst:.2f} pt apart. "
                   f"Target (≤ 0.05 pt): {_verdict(worst <= 0.05)}.")
    return _minus("\n".join(out))
