"""The README's ONNX export block, generated from results/onnx.json (called by
readme_numbers.py, which passes its `load` and `table`); targets are the issue's, stated
beside what was measured."""

from readme_structured import _minus, _verdict

IMAGES = (("vgg", "`vgg` f32"), ("vgg-int8-static", "`vgg` static int8 (QDQ)"),
          ("vgg-slim", "`vgg-slim` (Network Slimming)"), ("vgg-lowrank", "`vgg-lowrank` (spatial SVD)"),
          ("vgg-binary", "`vgg-binary` (binary weights, QDQ)"), ("lenet5", "`lenet5` f32"))


def _rng(e, key):
    lo, hi = e[f"{key}_range"]
    return f"{e[key]:.2f}× ({lo:.2f}–{hi:.2f})"


def block(load, table):
    r = load("onnx")
    rows = []
    for key, what in IMAGES:
        e = r["images"].get(key)
        if not e:
            continue
        if e["cpu"] != r["cpu"]:  # refreshed alone (check-onnx.sh IMAGES=...) on another machine
            what += f" (on {e['cpu']}, {e.get('rounds', r['rounds'])} rounds)"
        rows.append([what, f"{e['onnx_bytes'] / 1e3:,.0f}",
                     f"{e['accuracy_squeeze'] * 100:.2f}%", f"{e['accuracy_onnxruntime'] * 100:.2f}% "
                     f"({e['accuracy_delta_pt']:+.2f})",
                     f"{e['squeeze_latency_ms_b1']:.3f} / {e['onnxruntime_latency_ms_b1']:.3f}",
                     _rng(e, "latency_ratio_squeeze_over_ort"),
                     f"{e['squeeze_throughput_b256']:,.0f} / {e['onnxruntime_throughput_b256']:,.0f}",
                     _rng(e, "throughput_ratio_squeeze_over_ort")])
    img = table(["model", "model.onnx KB", "accuracy, squeeze", "accuracy, ONNX Runtime (pt)",
                 "batch-1 ms, squeeze / ORT", "latency squeeze ÷ ORT", "batch-256 img/s, squeeze / ORT",
                 "throughput squeeze ÷ ORT"], rows)
    rows = []
    for key, what in (("minilm-f32", "all-MiniLM-L6-v2 f32"), ("minilm-int8", "dynamic int8"),
                      ("minilm-int4", "int4 GPTQ g64 × int8 (`MatMulNBits`)")):
        e = r["text"].get(key)
        if not e:
            continue
        rows.append([what, f"{e['onnx_bytes'] / 1e6:.1f}", f"{e['spearman_squeeze']:.2f}",
                     f"{e['spearman_onnxruntime']:.2f}",
                     f"{e['cosine_to_squeeze_mean']:.7f} (min {e['cosine_to_squeeze_min']:.7f})",
                     f"{e['squeeze_latency_ms_b1']:.2f} / {e['onnxruntime_latency_ms_b1']:.2f}",
                     f"{e['squeeze_throughput_b32']:,.0f} / {e['onnxruntime_throughput_b32']:,.0f}"])
    txt = table(["encoder", "model.onnx MB", "STS-B dev, squeeze", "STS-B dev, ONNX Runtime",
                 "cosine to squeeze's embeddings", "batch-1 ms, squeeze / ORT",
                 "batch-32 sent/s, squeeze / ORT"], rows)
    return _minus(f"{img}\n\n{txt}\n\nMeasured on {r['cpu']}, 2 threads, ONNX Runtime "
                  f"{r['onnxruntime']}, {r['rounds']} alternating rounds (median, range of the "
                  "rounds' ratios).")


def notes(load):
    r = load("onnx")
    out = []
    f, q = r["text"].get("minilm-f32"), r["text"].get("minilm-int8")
    if f:
        ok = f["cosine_to_squeeze_min"] >= 0.99999
        out.append(f"- MiniLM f32 under ONNX Runtime: every STS-B dev sentence's embedding has cosine "
                   f"≥ {f['cosine_to_squeeze_min']:.7f} to squeeze's. Target (≥ 0.99999): {_verdict(ok)}.")
    if q:
        d = q["spearman_onnxruntime_minus_f32_export"]
        out.append(f"- int8 export under ONNX Runtime: STS-B dev {d:+.2f} pt against the f32 export "
                   f"(target: within 0.3 pt, {_verdict(abs(d) <= 0.3)}); its embeddings' cosine to "
                   f"squeeze's int8 ones averages {q['cosine_to_squeeze_mean']:.4f} (min "
                   f"{q['cosine_to_squeeze_min']:.4f}): ONNX's dynamic form quantizes each layer's "
                   "input per tensor to uint8, squeeze per 32 values of a row.")
        v = r["text"].get("minilm-int8-vs-ort-own")
        if v:
            ok = all(v[f"latency_ratio_vs_{k}"] <= 1.0 and v[f"throughput_ratio_vs_{k}"] >= 1.0
                     for k in ["ort_int8", "ort_int8_opt_pc"])
            out.append(f"- The int8 export against ONNX Runtime's own `quantize_dynamic` of the PyTorch "
                       f"export, all run by ONNX Runtime in one process over {v['rounds']} rotating rounds "
                       f"(`bench/peers/onnx_vs_ort.py`): batch-1 time "
                       f"{_rng(v, 'latency_ratio_vs_ort_int8')} of the per-tensor file's and "
                       f"{_rng(v, 'latency_ratio_vs_ort_int8_opt_pc')} of the transformer-optimized "
                       f"per-channel file's; batch-32 throughput {_rng(v, 'throughput_ratio_vs_ort_int8')} "
                       f"and {_rng(v, 'throughput_ratio_vs_ort_int8_opt_pc')}. Target (no slower at "
                       f"either, by the median): {_verdict(ok)}. Single rounds swing widely on this "
                       "shared 2-core machine (the ranges); the medians are the measurement.")
    i, f = r["images"].get("vgg-int8-static"), r["images"].get("vgg")
    if i:
        out.append(f"- Static int8 `vgg` under ONNX Runtime: {i['accuracy_delta_pt']:+.2f} pt test accuracy "
                   "against squeeze's own run of the same codes (ONNX rounds inputs halfway between "
                   "two codes to even, squeeze away from zero). Target (tract within 0.1 pt of ours, "
                   "checked in the suite on synthetic images; here ONNX Runtime on the test set): "
                   f"{_verdict(abs(i['accuracy_delta_pt']) <= 0.1)}.")
    if i and f:
        out.append(f"- ONNX Runtime runs the static int8 file at {i['onnxruntime_throughput_b256']:,.0f} img/s "
                   f"against {f['onnxruntime_throughput_b256']:,.0f} for the f32 one: it fuses a QDQ "
                   "convolution into `QLinearConv` only when the convolution's output is quantized "
                   "again (DQ → Conv → Q), and squeeze's int8 convolutions hand on f32 values (or "
                   "the next layer's codes, inside squeeze), so the file keeps float convolutions "
                   "between its QDQ pairs. The int8 codes still make the file smaller.")
    return _minus("\n".join(out))


def family(load, table):
    r = load("family").get("bert-base-int8")
    if not r:
        return ""
    rows = [[f"`{r['command']}`", f"{r['f32_weights_bytes'] / 1e6:.0f} MB → {r['int8_model_bytes'] / 1e6:.0f} MB",
             f"{r['peak_rss_bytes'] / 1e6:,.0f} MB", f"{r['wall_s']:.0f} s", f"{r['onnx_bytes'] / 1e6:.0f} MB"]]
    out = table(["command", "weights f32 → int8 file", "peak RSS", "wall time", "int8 model.onnx"], rows) + \
        f"\n\nMeasured on {r['cpu']} by `{r['measured_by']}`."
    h = load("family").get("hf-export")
    if h:
        cos = ", ".join(f"{k} {v:.7f}" for k, v in h["min_cosine_to_golden"].items())
        out += (f"\n\nHF export loaded back by sentence-transformers, lowest cosine to the golden "
                f"embeddings: {cos}.")
    return out
