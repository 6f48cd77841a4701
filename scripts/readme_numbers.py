#!/usr/bin/env python3
"""Regenerates the README's result tables from results/*.json, so its numbers are never
typed. Each table sits between `<!-- numbers:NAME -->` and `<!-- /numbers:NAME -->`.

    python3 scripts/readme_numbers.py          # rewrite README.md in place
    python3 scripts/readme_numbers.py --check  # exit 1 (and show what differs) if stale
"""
import difflib
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGETS = {"mlp": 89.0, "lenet5": 90.5, "vgg": 93.0, "resnet": 93.0, "densenet": 92.5}


def load(name):
    return json.loads((ROOT / "results" / f"{name}.json").read_text())


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def baselines():
    b = load("baselines")
    rows = []
    for arch, target in TARGETS.items():
        m = b[arch]
        rows.append([arch, f"{m['params']:,}", f"{m['flops'] / 1e6:.2f}",
                     f"{m['accuracy'] * 100:.2f}%", f"≥ {target}%", f"`{m['command']}`"])
    return table(["arch", "params", "MFLOPs", "test accuracy", "target", "command"], rows)


def cnn_speed():
    t, i = load("train-speed"), load("infer-speed")
    return table(["measure", "squeeze", "PyTorch", "ratio"], [
        ["training, s per 60k-image epoch", f"{t['squeeze_s_per_epoch']:.1f}",
         f"{t['pytorch_s_per_epoch']:.1f}", f"{t['ratio']:.2f} (squeeze / PyTorch)"],
        ["inference latency, batch 1 (ms)", f"{i['squeeze_latency_ms_b1']:.3f}",
         f"{i['pytorch_latency_ms_b1']:.3f}", f"{i['latency_ratio']:.2f}"],
        ["inference throughput, batch 256 (img/s)", f"{i['squeeze_throughput_b256']:,.0f}",
         f"{i['pytorch_throughput_b256']:,.0f}", f"{i['throughput_ratio']:.2f}×"],
    ])


def minilm():
    m = load("minilm")["f32"]
    p = m["peer"]
    return table(
        ["measure", "squeeze f32", "sentence-transformers (PyTorch f32)", "ONNX Runtime f32",
         "ONNX Runtime dynamic int8"],
        [["STS-B dev Spearman ×100", f"{m['spearman']:.4f}", f"{m['reference_spearman']:.4f}",
          "–", "–"],
         ["batch-1 latency, median (ms)", f"{m['latency_ms_b1']:.2f}",
          f"{p['pytorch_latency_ms_b1']:.2f}", f"{p['ort_f32_latency_ms_b1']:.2f}",
          f"{p['ort_int8_latency_ms_b1']:.2f}"],
         ["batch-32 throughput (sentences/s)", f"{m['throughput_b32']:.0f}",
          f"{p['pytorch_throughput_b32']:.0f}", f"{p['ort_f32_throughput_b32']:.0f}",
          f"{p['ort_int8_throughput_b32']:.0f}"]]) + (
        f"\n\nMeasured on {m.get('cpu', 'the machine of the run')}, {m['threads']} threads. "
        f"Ratios in that run: batch-1 latency {m['latency_ms_b1'] / p['pytorch_latency_ms_b1']:.2f}"
        f" × PyTorch (target ≤ 1.0), {m['latency_ms_b1'] / p['ort_f32_latency_ms_b1']:.2f} × ONNX"
        f" Runtime f32; batch-32 throughput {m['throughput_b32'] / p['pytorch_throughput_b32']:.2f}"
        f" × PyTorch, {m['throughput_b32'] / p['ort_f32_throughput_b32']:.2f} × ONNX Runtime f32.")


def isa():
    d = load("isa")
    rows = []
    for name, label in [("avx512", "AVX-512"), ("avx2", "AVX2 + FMA"), ("scalar", "scalar")]:
        ms = d.get(f"{name}_ms_b1")
        if ms is None:
            rows.append([label, f"not measured: this machine's CPU ({d['cpu']}) lacks it", "–"])
        else:
            rounds = ", ".join(f"{v:.2f}" for v in d[f"{name}_rounds_ms"])
            rows.append([label, f"{ms:.2f}", rounds])
    ratio = d.get("avx2_ratio")
    note = (f"\n\nAVX2 / AVX-512 = {ratio:.2f} (target ≤ 1.4)." if ratio is not None else
            "\n\n`avx2_ratio` (AVX2 / AVX-512, target ≤ 1.4) needs a machine with AVX-512 and is"
            " `null` until `squeeze bench isa` runs on one.")
    if "scalar_over_avx2" in d:
        note += f" Scalar / AVX2 = {d['scalar_over_avx2']:.2f}."
    return table(["path", f"batch-1 latency (ms, median of {d['rounds']} rounds)",
                  "per-round medians"], rows) + note


def passes():
    d = load("passes")
    rows = []
    for r in d["runs"]:
        b, a = r["before"], r["after"]
        if "accuracy" in b:
            q = f"{b['accuracy'] * 100:.2f}% → {a['accuracy'] * 100:.2f}% test accuracy"
        else:
            q = (f"STS-B dev Spearman {b['spearman']:.2f} → {a['spearman']:.2f}; "
                 f"{b['params'] / 1e6:.1f}M → {a['params'] / 1e6:.1f}M parameters; "
                 f"{2 * b['macs'] / 1e9:.2f} → {2 * a['macs'] / 1e9:.2f} GFLOPs per 128-token "
                 f"sentence; batch-1 {b['latency_ms_b1']:.2f} → {a['latency_ms_b1']:.2f} ms")
        did = "; ".join(p["label"] for p in r["passes"])
        rows.append([f"`{r['command']}`", did, q])
    return table(["command", "what the passes did", "before → after"], rows)


def demo():
    """One row per demo model; Δ quality and × ratios against the first row of its table
    (the original it was made from); params are logical, non-zero and the file say what is
    stored."""
    rows, first = [], {}
    for r in load("demo")["rows"]:
        m, t = r["metrics"], r["metrics"]["timing"]
        lat = t["latency_ms_b1"]
        text = m.get("spearman") is not None
        qv = m["spearman"] if text else m["accuracy"] * 100
        f = first.setdefault(r["workload"], (qv, m))
        q = f"{qv:.2f} (STS-B ρ)" if text else f"{qv:.2f}%"
        thr = f"{m['throughput_b32']:,.0f} (b32)" if text else f"{m['throughput_b256']:,.0f} (b256)"
        fm = f[1]
        ratio = lat["median"] / fm["timing"]["latency_ms_b1"]["median"]
        same = f[1] is m
        rows.append([r["workload"], f"`{r['model']}`", r["what"] + (r.get("slower") or ""), q,
                     "ref" if same else f"{qv - f[0]:+.2f}",
                     f"{m['params']:,} ({m['nonzero_params']:,} non-zero)",
                     f"{m['size_bytes'] / 1024:,.1f}",
                     "ref" if same else f"{m['size_bytes'] / fm['size_bytes']:.2f}×",
                     f"{lat['median']:.3f} [{lat['min']:.3f}–{lat['max']:.3f}]",
                     "ref" if same else f"{ratio:.2f}×" + (" (slower)" if ratio > 1 else ""),
                     thr])
    return table(["table", "model", "what made it", "quality", "Δ quality", "params", "size, KB",
                  "× size", "batch-1 latency, ms (median [range] of the interleaved rounds)",
                  "× time b1", "throughput, /s"], rows) + f"\n\nMeasured on {load('demo')['cpu']}."


def setup_time():
    d = load("setup-time")
    a, b = d["after"], d.get("before")
    text = (f"On this project's 2-core machine, from a clean clone with the crates already in "
            f"cargo's download cache, the test command took {a['test_s'] / 60:.0f} min (most of "
            f"it compiling the dependency tree once, in the release profile), then the demo "
            f"{a['demo_s'] / 60:.0f} min (reusing that build); `target/` holds "
            f"{a['target_bytes'] / 1e9:.1f} GB afterwards")
    if b:
        text += (f" (before the two commands shared one build: {b['test_s'] / 60:.0f} + "
                 f"{b['demo_s'] / 60:.0f} min, {b['target_bytes'] / 1e9:.1f} GB)")
    text += ". Measured by `" + d["command"] + "` → `results/setup-time.json`."
    runs = sorted(d.get("newcomer", {}).items())
    if runs:
        builds = sorted({n["build"] for _, n in runs})
        text += (f"\n\nA new user's first day (`{runs[0][1]['command']}`: a clean clone, "
                 f"{' or '.join(builds)}; the test command, the demo, every command of the "
                 f"Commands section, the test command again, the checkout clean after each) ")
        text += "; ".join(
            f"on {cpu}: test {n['test_s'] / 60:.0f} min, demo "
            f"{n['demo_s'] / 60:.0f} min, README commands {n['readme_commands_s'] / 60:.0f} min, "
            f"test again {n['test_again_s'] / 60:.0f} min" for cpu, n in runs) + "."
    return text


def prune():
    d = load("prune")
    kb = lambda b: f"{b / 1024:.1f}"
    out = []
    rows = []
    criteria = (("magnitude", "magnitude (per layer)"), ("obd", "OBD, Fisher diag (global)"),
                ("obd-hutchinson", "OBD, Hutchinson diag, 16 probes (global)"))
    for pct in (80, 90, 95):
        for method, label in criteria:
            if f"mlp-{method}-{pct}" not in d:
                continue
            cells = [f"{pct}%", label]
            for suffix in ("-oneshot", ""):
                e = d.get(f"mlp-{method}-{pct}{suffix}")
                cells.append(f"{e['accuracy'] * 100:.2f}%" if e else "—")
            rows.append(cells)
    loop = d.get("mlp-obd-loop-95")
    if loop:
        rows.append(["95%", "OBD loop: 5 × (Fisher cut + 1 epoch)", "—", f"{loop['accuracy'] * 100:.2f}%"])
    base = d["mlp-magnitude-90"]["baseline"]
    out.append(f"`zoo/mlp` (LeNet-300-100, {base * 100:.2f}% test accuracy), all three weight matrices; "
               "fine-tuned = 5 epochs after the one-shot cut, same budget and seed for every criterion:\n\n")
    out.append(table(["sparsity", "criterion", "one-shot", "fine-tuned 5 epochs"], rows))
    rows = []
    for key, what in (("mlp-agp-90", "AGP to 90% (15 epochs), CSR"),
                      ("mlp-deep-compression", "Deep Compression: AGP 94% + 5-bit sharing + Huffman"),
                      ("lenet5-deep-compression", "Deep Compression: AGP 93% + 8/5-bit sharing + Huffman")):
        e = d.get(key)
        if not e:
            continue
        rows.append([f"`{key}`", what, f"{e['baseline'] * 100:.2f}% → {e['accuracy'] * 100:.2f}%",
                     f"{e['nonzero_params']:,}", f"{kb(e['baseline_size_bytes'])} → {kb(e['size_bytes'])}",
                     f"{e['compression_ratio']:.1f}×",
                     f"{e['baseline_latency_ms_b1']:.3f} → {e['latency_ms_b1']:.3f}"])
    out.append("\n\n")
    out.append(table(["key", "what", "test accuracy", "non-zero params", "size on disk, KB", "smaller",
                      "batch-1 latency, ms"], rows))
    rows = []
    for pat, name in (("50", "50% unstructured"), ("2of4", "2:4")):
        for method in ("magnitude", "wanda", "sparsegpt"):
            e = d.get(f"minilm-{method}-{pat}")
            if not e:
                continue
            rows.append([name, method, f"{e['baseline']:.2f} → {e['spearman']:.2f}",
                         f"{e['spearman'] - e['baseline']:+.2f}",
                         f"{e['baseline_latency_ms_b1']:.2f} → {e['latency_ms_b1']:.2f}"])
    out.append("\n\nall-MiniLM-L6-v2, the 36 Linear weights of the encoder, no fine-tuning "
               "(Wanda and SparseGPT calibrated on 512 STS-B train sentences):\n\n")
    out.append(table(["sparsity", "method", "STS-B dev Spearman", "change", "batch-1 latency, ms"], rows))
    c = d.get("sparse-crossover")
    if c:
        f = lambda v: "never (up to 98%)" if v is None else f"{v * 100:.0f}%"
        out.append(f"\n\nCSR beats the dense kernels from {f(c['mlp_fc1'])} sparsity at batch 1 and "
                   f"{f(c['mlp_fc1_b256'])} at batch 256 for the 300×784 layer; from "
                   f"{f(c['minilm_ffn'])} and {f(c['minilm_ffn_b256'])} for MiniLM's 384×1536 "
                   f"(`{c['command']}`, {c['threads']} threads).")
        w = c.get("whole_model")
        if w:
            rng = lambda t: f"[{t['latency_ms_b1']['min']:.4f}–{t['latency_ms_b1']['max']:.4f}]"
            out.append(f" Whole models at batch 1, interleaved over {w['rounds']} rounds: `{w['dense']}` "
                       f"{w['dense_ms_b1']:.4f} ms {rng(w['dense_timing'])}, `{w['sparse']}` "
                       f"{w['sparse_ms_b1']:.4f} ms {rng(w['sparse_timing'])} ({w['ratio']:.2f}×; "
                       "median [min–max] of the rounds).")
    return "".join(out)


def rng(e, key):
    """A per-round ratio's median with its range: `0.64× (0.61–1.51)`."""
    lo, hi = e[key + "_range"]
    return f"{e[key]:.2f}× ({lo:.2f}–{hi:.2f})"


def embed_rss(e):
    """`squeeze embed`'s peak RSS on 100 sentences and its distance above the weights file."""
    if "embed_peak_rss_bytes" not in e:
        return "–"
    return f"{e['embed_peak_rss_bytes'] / 1e6:.1f} ({e['embed_peak_rss_over_weights_bytes'] / 1e6:+.1f})"


def quant():
    m = load("minilm")
    f = m["f32"]
    keys = [k for k in ["f32", "int8-dynamic", "int4-rtn-g128", "int4-gptq-g128", "int4-rtn-g64",
                        "int4-gptq-g64", "int4-gptq-g64-weight-only"] if k in m]
    rows = []
    for k in keys:
        e = m[k]
        cos = e.get("cosine_to_f32")
        rows.append([f"squeeze {k}", f"{e['spearman']:.2f}", f"{e['spearman'] - f['spearman']:+.2f}",
                     f"{cos:.4f}" if cos else "–",
                     f"{e['size_bytes'] / 1e6:.1f} ({e['size_bytes'] / f['size_bytes']:.0%})",
                     f"{e['peak_rss_bytes'] / 1e6:.0f} ({e['peak_rss_bytes'] / f['peak_rss_bytes']:.2f}×)",
                     embed_rss(e), f"{e['latency_ms_b1']:.2f}", f"{e['throughput_b32']:.0f}"])
    p = f["peer"]
    for name, label in [("ort_f32", "ONNX Runtime f32"), ("ort_int8", "ONNX Runtime int8 (per-tensor)"),
                        ("ort_int8_opt_pc", "ONNX Runtime int8 (optimized graph, per-channel)")]:
        cos = p.get(f"{name}_cosine_to_f32")
        rows.append([label, "–", "–", f"{cos:.4f}" if cos else "–", "–", "–", "–",
                     f"{p[name + '_latency_ms_b1']:.2f}", f"{p[name + '_throughput_b32']:.0f}"])
    e8 = m.get("int8-dynamic", {})
    text = (f"Measured on {f['cpu']}, {f['threads']} threads; batch-1 ms and sentences/s are medians "
            "of the rounds, peers' included.\n\n")
    text += table(["encoder", "STS-B ρ×100", "Δ vs f32", "cosine to f32", "file MB (of f32)",
                   "peak RSS of `eval`, MB", "peak RSS of `embed`, 100 sentences: MB (over the weights file)",
                   "batch-1 ms", "batch-32 sent/s"], rows)
    if e8:
        text += (f"\n\nIn that run, per round (median, range): dynamic int8 takes "
                 f"{rng(e8, 'latency_ratio_vs_ort_int8')} the batch-1 time of ONNX Runtime's best int8 and "
                 f"reaches {rng(e8, 'throughput_ratio_vs_ort_int8')} its batch-32 throughput; "
                 f"{e8['latency_ratio_vs_f32']:.2f}× our f32's batch-1 time. Command: `{e8.get('measured_by', e8['command'])}`.")
    q = load("quant")
    rows = []
    for k in ["vgg-int8-static", "lenet5-int8-static"]:
        if k not in q:
            continue
        e = q[k]
        rows.append([k, f"{e['baseline']:.2f}% → {e['accuracy']:.2f}%",
                     f"{e['baseline_size_bytes'] / 1e3:.0f} → {e['size_bytes'] / 1e3:.0f}",
                     f"{e['baseline_latency_ms_b1']:.3f} / {e['latency_ms_b1']:.3f} / {e['pytorch_int8_latency_ms_b1']:.3f}",
                     f"{e['baseline_throughput_b256']:,.0f} / {e['throughput_b256']:,.0f} / {e['pytorch_int8_throughput_b256']:,.0f}",
                     rng(e, "throughput_ratio_vs_pytorch_int8")])
    v = q["vgg-int8-static"]
    text += (f"\n\nMeasured on {v['cpu']}, {v['threads']} threads, PyTorch's int8 timed after ours in "
             "every round:\n\n")
    text += table(["model", "test accuracy (f32 → int8)", "KB on disk",
                   "batch-1 ms: f32 / int8 / PyTorch int8",
                   "batch-256 img/s: f32 / int8 / PyTorch int8",
                   "batch-256 × PyTorch int8, per round"], rows)
    k = load("kernels")
    sp = k["speedup_vs_f32"]
    cells = []
    for shape in ["attn_out_384x384", "qkv_384x1152", "ffn_up_384x1536", "ffn_down_1536x384"]:
        cells.append([shape] + [" / ".join(f"{sp[f'{shape}_m{m}'][fmt]:.2f}×"
                                           for fmt in ["int8", "int4-g128", "int4-g64-a8"])
                                for m in [1, 32, 128]])
    conv = "vgg_conv_64x64_3x3_14x14"
    if f"{conv}_m1" in sp:
        cells.append([f"{conv} (1, 32, 128 images; static int8, no int4 convolution)"]
                     + [f"{sp[f'{conv}_m{m}']['int8']:.2f}× / – / –" for m in [1, 32, 128]])
    text += "\n\n" + table(["layer (MiniLM shape)",
                             "1 row: int8 / int4 weight-only / int4 × int8 vs f32", "32 rows",
                             "128 rows"], cells)
    text += f"\n\nKernel speed-ups: `{k['command']}` on {k['cpu']}, {k['threads']} threads ({k['method']})."
    return text


def wall(m, key):
    """A student's distillation wall time; one continued from the 3-layer student adds that run's."""
    e = m[key]
    if key == "distilled-3layer-wordnet" and "distilled-3layer" in m:
        first = m["distilled-3layer"]["distill_wall_s"]
        return f"{first:.0f} + {e['distill_wall_s']:.0f}"
    return f"{e['distill_wall_s']:.0f}"


def distill():
    d = load("distill")
    rows = []
    names = {"student-scratch": "vgg student, from scratch", "student-kd": "vgg student, KD",
             "student-kd-hints": "vgg student, KD + hint", "dwsep-vgg": "depthwise-separable vgg, KD",
             "dwsep-vgg-quarter": "vgg, 4 of 5 convolutions separable, KD",
             "condensenet": "CondenseNet, condensed from the dense DenseNet-BC with KD (teacher columns: that model)",
             "condensenet-same-budget": "CondenseNet, same budget as the dense model (teacher columns: the dense model)"}
    for key, label in names.items():
        if key not in d:
            continue
        e = d[key]
        seeds = ", ".join(f"{a:.2f}" for a in e["accuracy_per_seed"])
        rows.append([label, f"{e['accuracy_mean']:.2f}% ({seeds})", f"{e['teacher_accuracy']:.2f}%",
                     f"{e['params']:,} / {e['teacher_params']:,}",
                     f"{e['flops'] / 1e6:.1f} / {e['teacher_flops'] / 1e6:.1f}",
                     f"{e['latency_ms_b1']:.3f} / {e['teacher_latency_ms_b1']:.3f}",
                     f"{e['throughput_b256']:,.0f} / {e['teacher_throughput_b256']:,.0f}"])
    out = table(["student", "test accuracy, mean (per seed)", "teacher", "params (student / teacher)",
                 "MFLOPs", "batch-1 ms", "batch-256 img/s"], rows)
    m = load("minilm")
    text = []
    for key, label in [("distilled-3layer", "3 layers"),
                       ("distilled-3layer-wordnet", "3 layers, + 1 epoch with WordNet examples"),
                       ("distilled-3layer-narrow", "3 layers, 6 heads, FFN 768")]:
        if key in m:
            e = m[key]
            text.append([label, f"{e['spearman']:.2f}", f"{m['f32']['spearman']:.2f}",
                         f"{e['spearman'] / m['f32']['spearman'] * 100:.1f}%",
                         f"{e['latency_ms_b1']:.2f} / {e['teacher_latency_ms_b1']:.2f}",
                         wall(m, key)])
    if text:
        out += "\n\n" + table(["all-MiniLM-L6-v2 student", "STS-B dev", "teacher", "of teacher",
                                "batch-1 ms (student / teacher)", "distillation wall s"], text)
    if "train-text-speed" in d:
        t = d["train-text-speed"]
        out += (f"\n\nOne distillation step of the 3-layer student (batch {t['batch']}, {t['tokens']} tokens): "
                f"squeeze {t['squeeze_ms_per_step']:.0f} ms, PyTorch {t['pytorch_ms_per_step']:.0f} ms "
                f"(ratio {t['ratio']:.2f}; `{t['command']}`).")
    return out


def reliability():
    r = load("reliability")
    f = r["fuzz"]
    rows = [[name, f"{t['cases']:,}", f"{t['loaded']:,}", f"{t['refused']:,}", t["failures"],
             f"{t['slowest_ms']:.0f}"] for name, t in sorted(f["targets"].items())]
    out = (f"The long fuzz run (`{f['command']}`, {r['cpu']}): {f['cases']:,} cases in "
           f"{f['seconds'] / 60:.0f} min, {f['failures']} failures, {f['rounds_died']} rounds "
           f"killed by an abort, OOM or hang, peak RSS {f['peak_rss_bytes'] / 2**20:.0f} MB.\n\n")
    out += table(["loader", "cases", "loaded and checked", "refused cleanly", "failures",
                  "slowest case ms"], rows)
    fi = r["fault_injection"]
    same = sum(b["bit_identical"] for b in fi["boundaries"])
    out += (f"\n\nKilled at each of the {len(fi['boundaries'])} write boundaries of a checkpoint "
            f"and resumed: {same} of {len(fi['boundaries'])} bit-identical to the uninterrupted "
            f"run. A torn checkpoint's resume: \"{fi['torn_checkpoint_resume']}\".\n\n")
    rows = [[f"`{m['model']}`", m["input"], f"{m['weights_bytes'] / 2**20:.1f}",
             f"{m['peak_rss_mb']:.1f}", f"{m['over_weights_mb']:+.1f}"] for m in r["memory"]["runs"]]
    out += ("Peak RSS of `squeeze embed` (three sentences, and one 65 MB line):\n\n"
            + table(["model", "input", "weights MB", "peak RSS MB", "over the weights MB"], rows))
    return out


def quant_notes():
    m, q, k = load("minilm"), load("quant"), load("kernels")
    f, i8 = m["f32"], m["int8-dynamic"]
    peer = i8["peer"]
    pt = lambda e: f"{e['spearman'] - f['spearman']:+.2f}".replace("-", "−")
    x = lambda v: f"{v:.2f}×"
    sp = k["speedup_vs_f32"]
    lin = [v["int8"] for n, v in sp.items() if not n.startswith("vgg_conv")]
    conv = [v["int8"] for n, v in sp.items() if n.startswith("vgg_conv")]
    g64, r64, g128, r128 = (m[n] for n in ("int4-gptq-g64", "int4-rtn-g64", "int4-gptq-g128", "int4-rtn-g128"))
    wo = m["int4-gptq-g64-weight-only"]
    out = [
        f"- Dynamic int8 keeps all-MiniLM-L6-v2's STS-B within 0.1 pt ({pt(i8)}) and its embeddings "
        f"at a mean cosine of {i8['cosine_to_f32']:.4f} to f32's. ONNX Runtime's int8 reaches "
        f"{peer['ort_int8_cosine_to_f32']:.3f} (per-tensor) and {peer['ort_int8_opt_pc_cosine_to_f32']:.3f} "
        f"(per-channel). The file is {i8['size_bytes'] / f['size_bytes'] * 100:.0f}% of f32's, `eval`'s peak "
        f"memory {x(i8['peak_rss_bytes'] / f['peak_rss_bytes'])} (it includes the packed copy of the int8 "
        "weights the kernel reads). The fidelity comes from one activation scale per 32 inputs of a token "
        "(llama.cpp's Q8_0 block) rather than one per token: MiniLM has outlier features. The codes span "
        "±64 rather than ±127 (see the kernel below).",
        f"- Speed on {i8['cpu']} in the recorded run; the peers run in one Python process that takes its turn "
        "after our encoders in every round, and each ratio is the median of the rounds' own ratios (their "
        f"range in brackets). Dynamic int8 takes {rng(i8, 'latency_ratio_vs_ort_int8')} ONNX Runtime's best "
        f"int8 batch-1 time ({i8['latency_ms_b1']:.2f} against {peer['ort_best_int8_latency_ms_b1']:.2f} ms) and "
        f"runs {rng(i8, 'throughput_ratio_vs_ort_int8')} its batch-32 throughput ({i8['throughput_b32']:.0f} "
        f"against {peer['ort_best_int8_throughput_b32']:.0f} sentences/s); against our f32, "
        f"{x(i8['latency_ratio_vs_f32'])} the batch-1 time and {x(i8['throughput_b32'] / f['throughput_b32'])} "
        f"the throughput. Our f32 runs {rng(f, 'throughput_ratio_vs_ort_f32')} ONNX Runtime f32's batch-32 "
        "throughput. A single round's ratio can be far from the median: ONNX Runtime's own times move "
        f"between rounds. Per layer (`results/kernels.json`) int8 runs {min(lin):.1f}–{max(lin):.1f}× our f32 "
        f"on MiniLM's shapes; on `vgg`'s 3×3 convolution static int8 runs {min(conv):.1f}–{max(conv):.1f}× f32.",
        f"- int4 with 64-weight groups and int8 activations (the integer int4 × int8 product): GPTQ "
        f"(act-order) ends {pt(g64)} pt from f32 on STS-B with embedding cosine {g64['cosine_to_f32']:.3f}, "
        f"where round-to-nearest ends {pt(r64)} pt (cosine {r64['cosine_to_f32']:.3f}). Both files are "
        f"{max(g64['size_bytes'], r64['size_bytes']) / f['size_bytes'] * 100:.0f}% of f32's. With 128-weight "
        f"groups GPTQ's cosine is {g128['cosine_to_f32']:.3f} against RTN's {r128['cosine_to_f32']:.3f}, with "
        f"STS-B {pt(g128)} / {pt(r128)} pt. STS-B moves between runs whose embeddings differ only by float "
        f"rounding, so read the cosine for fidelity. The integer kernel takes {x(g64['latency_ratio_vs_f32'])} "
        f"our f32's batch-1 time ({g64['latency_ms_b1']:.2f} against {f['latency_ms_b1']:.2f} ms); the same "
        f"GPTQ weights weight-only (f32 activations, codes widened in registers) take "
        f"{x(wo['latency_ratio_vs_f32'])} ({wo['latency_ms_b1']:.2f} ms, cosine {wo['cosine_to_f32']:.3f}).",
    ]
    v, l = q["vgg-int8-static"], q["lenet5-int8-static"]
    d = lambda e: f"{e['accuracy'] - e['baseline']:+.2f}".replace("-", "−")
    out.append(
        f"- Static int8 CNNs move accuracy by {d(v)} pt (`vgg`) and {d(l)} pt (`lenet5`). Against our f32 "
        "and PyTorch's static int8 (its `x86` and `fbgemm` backends, the faster of the two, timed after ours "
        f"in every round) on {v['cpu']}: at batch 1 `vgg` takes {v['latency_ms_b1']:.2f} ms against "
        f"{v['baseline_latency_ms_b1']:.2f} (f32) and {v['pytorch_int8_latency_ms_b1']:.2f} (PyTorch int8), "
        f"`lenet5` {l['latency_ms_b1']:.2f} against {l['baseline_latency_ms_b1']:.2f} and "
        f"{l['pytorch_int8_latency_ms_b1']:.2f}; at batch 256 `vgg` int8 runs {x(v['throughput_ratio_vs_f32'])} "
        f"our f32 and {rng(v, 'throughput_ratio_vs_pytorch_int8')} PyTorch's int8, `lenet5` "
        f"{x(l['throughput_ratio_vs_f32'])} and {rng(l, 'throughput_ratio_vs_pytorch_int8')} "
        f"(our kernel path: `{v['isa']}`). Where a ratio is below 1×, see `docs/profiling.md` for where "
        "our time goes.")
    if "embed_peak_rss_bytes" in i8:
        mb = lambda e, k: f"{e[k] / 1e6:.1f}"
        out.append(
            f"- Memory: `squeeze embed` on {i8['embed_sentences']} STS-B sentences (batch 32) peaks at "
            f"{mb(f, 'embed_peak_rss_bytes')} MB for f32 ({mb(f, 'embed_peak_rss_over_weights_bytes')} MB "
            f"above its weights file) and {mb(i8, 'embed_peak_rss_bytes')} MB "
            f"for dynamic int8 ({mb(i8, 'embed_peak_rss_over_weights_bytes')} MB above). Each Linear weight "
            "is held once: packed into the layout its kernel reads as the model loads, the stored original "
            "dropped node by node (`interp::keep_packed_only`), and `embed` allocates from the C library's "
            "malloc, which hands freed pages back where mimalloc kept them (`docs/profiling.md`). The rest "
            "above the weights is the binary's pages, the tokenizer and the activations. `eval` keeps both "
            "forms (it also reports parameters from the stored weights), hence its larger peak.")
    return "\n".join(out)


def distill_notes():
    d, m = load("distill"), load("minilm")
    kd, sc, hint = d["student-kd"], d["student-scratch"], d["student-kd-hints"]
    gains = [a - b for a, b in zip(kd["accuracy_per_seed"], sc["accuracy_per_seed"])]
    ds, dq = d["dwsep-vgg"], d["dwsep-vgg-quarter"]
    cn, cs = d["condensenet"], d["condensenet-same-budget"]
    speed = [v["throughput_b256"] / v["baseline_throughput_b256"] for v in (ds, dq)]
    t = m["f32"]
    st = {k: m[k] for k in ("distilled-3layer", "distilled-3layer-wordnet", "distilled-3layer-narrow")}
    of = lambda e: e["spearman"] / t["spearman"] * 100
    lat = lambda e: e["latency_ms_b1"] / e["teacher_latency_ms_b1"]
    w, n3, nn = st["distilled-3layer-wordnet"], st["distilled-3layer"], st["distilled-3layer-narrow"]
    return (
        f"Soft targets add {kd['vs_scratch_pt']:.2f} points over training from scratch "
        f"({min(gains):.2f}–{max(gains):.2f} seed by seed). The hint adds "
        f"{hint['accuracy'] - kd['accuracy']:+.2f} points at 2 epochs.".replace("-0.", "−0.") + " The depthwise-separable vgg is "
        f"{ds['baseline'] - ds['accuracy']:.1f} points below its teacher at 1/{ds['baseline_flops'] / ds['flops']:.1f} "
        "of its FLOPs after 5 epochs: not within the 1-point target. Keeping one convolution dense "
        "(`recipes/vgg-dwsep-quarter.toml`: features.14, 64 → 128 channels at 7×7, starts from the "
        f"teacher's weights) costs {dq['flops'] / dq['baseline_flops']:.2f} of the teacher's FLOPs and, "
        f"distilled for 5 epochs, is {dq['baseline'] - dq['accuracy']:.2f} points below it: within the "
        f"target. The separable models' speed gains ({min(speed):.1f}–{max(speed):.1f}× at batch 256) are far "
        "below their FLOP ratios, because depthwise and 1×1 layers are memory-bound. CondenseNet keeps "
        f"{cn['flops'] / cn['baseline_flops']:.2f} of its dense counterpart's FLOPs. With the same budget as "
        "that dense model (3 epochs of condensing after 3 dense ones) it loses "
        f"{cs['baseline'] - cs['accuracy']:.1f} points. Condensing the trained 6-epoch dense model instead, "
        "while distilling from it (6 epochs, `recipes/densenet-bc-condense-kd.toml`), then distilling the "
        "materialized model from it for 4 more epochs and another 6 (a second cosine run from lr 0.01) "
        f"brings it to {cn['accuracy']:.2f}%, {cn['baseline'] - cn['accuracy']:.2f} points below the dense "
        "model: within the 0.5-point target. That takes 16 epochs on top of the dense model's 6 (the dense "
        "model itself was not trained further, so part of the gain is the longer schedule's; the paper "
        "trains CondenseNets from scratch for 300 epochs). Its batch-1 latency and batch-256 throughput are "
        f"about the dense model's ({cn['latency_ms_b1']:.2f} vs {cn['baseline_latency_ms_b1']:.2f} ms, "
        f"{cn['throughput_b256']:.0f} vs {cn['baseline_throughput_b256']:.0f} images/s): the concatenations, "
        "BatchNorms, gathers and im2col copies of this small DenseNet do not shrink with the convolutions' "
        "FLOPs, and at about 2 ms per image this measurement moves with the order of the rotation.\n\n"
        f"The 3-layer MiniLM student reaches {of(n3):.1f}% of the teacher's STS-B score after 3 epochs on the "
        f"STS-B train sentences, and {of(w):.1f}% (the target is 97%) after one more epoch on those plus "
        "WordNet's usage examples (`scripts/wordnet-sentences.py`; `squeeze distill --student runs/minilm-3l "
        "--sentences data/stsb/sts-train.csv --sentences data/wordnet/examples.txt --lr 1e-4 --epochs 1`, as "
        f"`scripts/distill-experiments.sh text` runs it), at {lat(w):.2f}× the teacher's batch-1 latency. The "
        f"narrow one reaches {of(nn):.1f}% at {lat(nn):.2f}×.")


def prune_notes():
    p = load("prune")
    acc = lambda k: p[k]["accuracy"] * 100
    pt = lambda k: f"{(p[k]['accuracy'] - p[k]['baseline']) * 100:+.2f}".replace("-", "−")
    st = lambda k: p[k]["spearman"] - p[k]["baseline"]
    o90 = p["mlp-obd-90"]
    cross = p["sparse-crossover"]
    lo, hi = sorted((cross["minilm_ffn"], cross["mlp_fc1"]))
    mag_win = all(acc(f"mlp-magnitude-{s}-oneshot") > acc(f"mlp-obd-{s}-oneshot") for s in (80, 90, 95))
    obd_ahead = [s for s in (90, 95) if acc(f"mlp-obd-{s}") > acc(f"mlp-magnitude-{s}")]
    hutch_weakest = acc("mlp-obd-hutchinson-90") < min(acc("mlp-magnitude-90"), acc("mlp-obd-90"))
    wanda = [st(k) for k in ("minilm-wanda-50", "minilm-sparsegpt-50")]
    two4 = [st(k) for k in ("minilm-wanda-2of4", "minilm-sparsegpt-2of4")]
    out = [
        "- One-shot, magnitude "
        + ("beats OBD's saliency at every sparsity" if mag_win else "does not beat OBD's saliency at every sparsity")
        + f" on this network. After the same 5 fine-tuning epochs, OBD is ahead at {' and '.join(f'{s}%' for s in obd_ahead) or 'no sparsity'}. "
        "Its global threshold prunes fc1 hardest and leaves the later layers denser, so they stay below the "
        f"CSR threshold and are stored dense, hence {o90['params']:,} stored parameters for "
        f"{o90['nonzero_params']:,} non-zeros at 90%.",
        "- The Hutchinson estimate (16 probes per batch) is unbiased but noisy"
        + (", and its OBD is the weakest criterion at 90% after fine-tuning" if hutch_weakest else "")
        + f" ({acc('mlp-obd-hutchinson-90'):.2f}% against Fisher's {acc('mlp-obd-90'):.2f}%). The Fisher "
        "diagonal has no sampling noise: it sums over every class of every example.",
        f"- The OBD loop (`rounds = 5`, one epoch after each cut) ends at {acc('mlp-obd-loop-95'):.2f}% at 95%, "
        f"against {acc('mlp-obd-95'):.2f}% for one cut followed by the same five epochs: with this budget the "
        "recovery after the final cut matters more.",
        f"- AGP reaches 90% at {pt('mlp-agp-90')} pt. Deep Compression gives "
        f"{p['mlp-deep-compression']['compression_ratio']:.1f}× (LeNet-300-100) and "
        f"{p['lenet5-deep-compression']['compression_ratio']:.1f}× (LeNet-5) at {pt('mlp-deep-compression')} and "
        f"{pt('lenet5-deep-compression')} pt. The paper reports 40× and 39× on MNIST.",
        "- On all-MiniLM-L6-v2 without fine-tuning, Wanda and SparseGPT keep STS-B at 50% "
        f"({wanda[0]:+.2f} and {wanda[1]:+.2f} pt) and lose "
        + ("–".join(sorted({f"{-v:.1f}" for v in two4}))) + " pt at 2:4. "
        + f"Magnitude loses {-st('minilm-magnitude-50'):.1f} and {-st('minilm-magnitude-2of4'):.1f} pt.",
        f"- At 50% the Linear weights stay dense: CSR only pays beyond about {lo * 100:.0f}–{hi * 100:.0f}% "
        "sparsity here (`sparse-crossover`), and this CPU has no 2:4 sparse instructions. So these MiniLM "
        "rows run at the dense model's speed, and their latency differences are the machine's noise.",
        "- The batch-1 latencies inside `compress` tables of the 0.1 ms MLPs are noise too (their rounds' "
        "ranges overlap). The dedicated 15-round comparison above is the one to read: the 90%-sparse CSR "
        f"model takes {cross['whole_model']['ratio']:.2f}× the dense one's time (median of the rounds).",
    ]
    return "\n".join(out).replace("+-", "−").replace("−-", "−")


def emulated(name="emulated-avx512"):
    r = load(name)
    status = "all pass" if r["ok"] else "NOT all pass"
    isa = re.search(r"SQUEEZE_ISA=\w+", r["emulated_cpu"]).group(0)  # the path the run forced
    cpu = re.search(r"Intel ([\w ]+?) model", r["emulated_cpu"]).group(1)  # Bochs' model
    return (f"`{r['command']}` booted the `{r['test_binary']}` test binary as the init process "
            f"of a Linux kernel in Bochs emulating {'an' if cpu[0] in 'AEIOU' else 'a'} {cpu} "
            f"(flags seen: {', '.join(r['cpu_flags_seen'])}), with `{isa}`: {r['passed']} of "
            f"{r['passed'] + r['failed']} tests passed ({status}; host {r['host_cpu']}; "
            f"`results/{name}.json`).")


def structured():
    import readme_structured
    return readme_structured.block(load, table)


def structured_notes():
    import readme_structured
    return readme_structured.notes(load)


def lowrank():
    import readme_lowrank
    return readme_lowrank.block(load, table)


def lowrank_notes():
    import readme_lowrank
    return readme_lowrank.notes(load)


def qat():
    import readme_qat
    return readme_qat.block(load, table)


def qat_notes():
    import readme_qat
    return readme_qat.notes(load)


def onnx():
    import readme_onnx
    return readme_onnx.block(load, table)


def onnx_notes():
    import readme_onnx
    return readme_onnx.notes(load)


def kinds():
    import readme_kinds
    return readme_kinds.block(table)


def family():
    import readme_onnx
    return readme_onnx.family(load, table)


BLOCKS = {"setup-time": setup_time, "baselines": baselines, "cnn-speed": cnn_speed, "minilm": minilm, "isa": isa,
          "passes": passes, "demo": demo, "prune": prune, "quant": quant,
          "distill": distill, "reliability": reliability,
          "emulated-avx512": emulated, "emulated-avxvnni": lambda: emulated("emulated-avxvnni"),
          "quant-notes": quant_notes,
          "distill-notes": distill_notes, "prune-notes": prune_notes,
          "structured": structured, "structured-notes": structured_notes,
          "lowrank": lowrank, "lowrank-notes": lowrank_notes, "qat": qat, "qat-notes": qat_notes,
          "onnx": onnx, "onnx-notes": onnx_notes, "family": family, "kinds": kinds}


# Numbers in README prose that are not measurements (targets, defaults, shapes, versions,
# test constants): each allowed with the words around it. Any other measurement-like number
# outside the generated blocks fails --check: it must come from results/ through a block.
PROSE_CONSTANTS = [
    "90% sparse", "exactly 0.0", "40 MB", "PyTorch 2.15", "0.99999", "0.01 ×", "default 0.85",
    "8×8", "α = 0.9", "1.5×", "1×1", "WordNet 3.0", "3×3", "2 minutes", "candle 0.11",
    "below 0.7·mean|W|", "digits per byte for ternary: 1.6 bits",
    "no older than 1.89", "is 1.63",  # rustc versions (set-up), not measurements
]


def prose_numbers(text):
    """Measurement-like numbers (with ×, %, ms, pt, MB, GB, min, s or a decimal point) in the
    README's prose: outside generated blocks, code, inline code and tables; with their line."""
    t = re.sub(r"<!-- (numbers:\S+|passes:reference|limits:reference) -->.*?<!-- /\1 -->", "", text, flags=re.S)
    t = re.sub(r"```.*?```", "", t, flags=re.S)
    t = re.sub(r"`[^`\n]*`", "", t)
    found = []
    for line in t.split("\n"):
        if line.startswith("|"):
            continue
        for m in re.finditer(r"(?<![\w.])[−-]?\d+(?:[.,]\d+)*(?:×|%| ms| pt| MB| GB| min| s\b)?", line):
            tok = m.group(0)
            if re.search(r"×|%|ms|pt|MB|GB|min|\.\d", tok):
                found.append((tok, line.strip()))
    return [(tok, line) for tok, line in found
            if not any(tok.lstrip("−-") in c and c in line for c in PROSE_CONSTANTS)]


def render(text):
    for name, make in BLOCKS.items():
        pat = re.compile(rf"(<!-- numbers:{name} -->\n).*?(\n<!-- /numbers:{name} -->)", re.S)
        if not pat.search(text):
            sys.exit(f"README.md has no <!-- numbers:{name} --> block")
        text = pat.sub(lambda m: m.group(1) + make() + m.group(2), text)
    return text


def main():
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if "--check" in sys.argv:
        typed = prose_numbers(new)
        if typed:
            for tok, line in typed:
                print(f"typed number {tok!r} in: {line[:120]}")
            sys.exit("README.md prose has numbers no results file backs: generate them in a "
                     "numbers block or remove them (constants go in PROSE_CONSTANTS)")
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), "README.md", "regenerated"))
            sys.exit("README.md numbers are stale: run python3 scripts/readme_numbers.py")
        print("README.md numbers match results/")
        return
    path.write_text(new)


if __name__ == "__main__":
    main()
