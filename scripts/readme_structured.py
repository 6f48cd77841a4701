"""The README's structured-pruning blocks, generated from results/structured.json (called by
readme_numbers.py, which passes its `load` and `table`). Rows appear for the experiments
the file holds; targets are the issue's, stated beside what was measured."""


def _ratio(e, key, inverse=False):
    a, b = e[key], e["baseline_" + key]
    return b / a if inverse else a / b


def _rounds(e):
    """How many interleaved timing rounds the entry's command ran (`--rounds N`)."""
    cmd = e["command"].split()
    n = cmd[cmd.index("--rounds") + 1] if "--rounds" in cmd else "5"
    return f"speeds interleaved over {n} rounds"


def _pt(e):
    metric = "spearman" if "spearman" in e else "accuracy"
    scale = 1 if metric == "spearman" else 100
    return (e[metric] - e["baseline"]) * scale


def _quality(e):
    if "spearman" in e:
        return f"{e['baseline']:.2f} → {e['spearman']:.2f}"
    return f"{e['baseline'] * 100:.2f}% → {e['accuracy'] * 100:.2f}%"


def _speed_cells(e):
    return [f"{e['baseline_latency_ms_b1']:.3f} → {e['latency_ms_b1']:.3f} ({_ratio(e, 'latency_ms_b1', True):.2f}×)",
            f"{e['baseline_throughput']:.0f} → {e['throughput']:.0f} ({_ratio(e, 'throughput'):.2f}×)"]


CNN_ROWS = (("vgg-slimming", "vgg", "Network Slimming: training with an L1 penalty on γ, one global threshold on γ, fine-tuning"),
            ("vgg-slimming-int8", "vgg", "the same, then BatchNorm folded and static int8"),
            ("resnet-channel-50", "resnet", "Taylor, global, 50% of FLOPs, 2 rounds + fine-tuning"),
            ("densenet-channel-40", "densenet", "Taylor, global, 40% of FLOPs, 2 rounds + fine-tuning"))


def cnn(d, table):
    rows = []
    for key, model, what in CNN_ROWS:
        e = d.get(key)
        if not e:
            continue
        rows.append([f"`{key}`", what, _quality(e), f"{e['channels_removed'] * 100:.0f}%",
                     f"{e['baseline_params']:,} → {e['params']:,}",
                     f"{_ratio(e, 'flops', True):.2f}×", f"{_ratio(e, 'size_bytes', True):.1f}×"]
                    + _speed_cells(e) + [f"{e['finetune_seconds'] / 60:.0f} min"])
    return table(["key", "what", "test accuracy", "channels removed", "params", "fewer FLOPs",
                  "smaller file", "batch-1 latency, ms", "images/s at batch 256", "training in the recipe"], rows)


def criteria(d, table):
    rows = []
    for crit, name in (("l1", "L1 norm"), ("taylor", "Taylor"), ("bn", "BatchNorm γ")):
        for alloc, suffix in (("uniform", ""), ("global", "-global")):
            e = d.get(f"vgg-{crit}-60{suffix}")
            if not e:
                continue
            rows.append([name, alloc, f"{e['accuracy'] * 100:.2f}%", f"{_pt(e):+.2f}",
                         f"{e['channels_removed'] * 100:.0f}%", f"{_ratio(e, 'flops', True):.2f}×",
                         f"{_ratio(e, 'latency_ms_b1', True):.2f}×", f"{_ratio(e, 'throughput'):.2f}×"])
    return table(["criterion", "allocation", "test accuracy", "change, pt", "channels removed",
                  "fewer FLOPs", "batch-1 speed-up", "batch-256 speed-up"], rows)


def minilm(d, table):
    rows = []
    for pct in (10, 20, 30, 40, 50):
        cal, glob, norm, rec = (d.get(f"minilm-heads-ffn-{pct}{s}") for s in ("", "-global", "-norm", "-recovered"))
        if not (cal or glob or norm or rec):
            continue
        sp = lambda e: f"{e['spearman']:.2f} ({_pt(e):+.2f})" if e else "—"
        shown = _delivered(cal, rec)
        speed = _speed_cells(shown) if shown else ["—", "—"]
        rows.append([f"{pct}%", sp(norm), sp(glob), sp(cal), sp(rec),
                     f"{rec['finetune_seconds'] / 60:.1f} min" if rec else "—",
                     f"{shown['baseline_params']:,} → {shown['params']:,}" if shown else "—"] + speed)
    return table(["encoder attention + FFN params removed", "weight norm, uniform (`narrow`'s rule)",
                  "calibrated (Taylor/Fisher), global", "calibrated, uniform", "calibrated, uniform + recovery",
                  "recovery time", "params (calibrated, uniform)", "batch-1 latency, ms (uniform + recovery)",
                  "sentences/s at batch 32 (uniform + recovery)"], rows)


def _delivered(pruned, recovered):
    """The entry whose speeds the README shows for a fraction: the model the recipe
    delivers, the recovered one where it exists (the same widths, so the same cost), as its
    own run measured it."""
    return recovered or pruned


def _minus(text):
    """Signed numbers with a real minus sign, as the other README blocks write them."""
    import re
    return re.sub(r"(?<![\w.])-(?=\d)", "−", text)


def block(load, table):
    d = load("structured")
    out = ["Fashion-MNIST CNNs, each against its committed `zoo/` original in the same run:\n\n", cnn(d, table)]
    if any(k.startswith("vgg-") and "-60" in k for k in d):
        out += ["\n\n`vgg`, criteria compared at equal FLOPs (60% removed in one shot, then 1 epoch of "
                "fine-tuning, same optimizer, schedule and seed for every row):\n\n", criteria(d, table)]
    if any(k.startswith("minilm-") for k in d):
        base = next(e["baseline"] for k, e in d.items() if k.startswith("minilm-"))
        out += [f"\n\nall-MiniLM-L6-v2 (STS-B dev Spearman {base:.2f}), whole heads and FFN units removed; "
                "the fraction is of the encoder's attention and FFN parameters (embeddings excluded); "
                "speeds against the unpruned encoder in the same run:\n\n", minilm(d, table)]
    out.append("\n\n" + _machines(d))
    return _minus("".join(out))


def _machines(d):
    """Which CPU measured which rows: each ratio is within one run on one machine, but
    the machines differ between sessions."""
    by = {}
    for k, e in sorted(d.items()):
        if e.get("cpu"):
            by.setdefault(e["cpu"], []).append(k)
    if len(by) == 1:
        return f"Measured on {next(iter(by))}."
    most = max(by, key=lambda c: len(by[c]))
    rest = "; ".join(f"{', '.join(f'`{k}`' for k in ks)} on {c}" for c, ks in by.items() if c != most)
    return f"Measured on {most}, except {rest}."


def _verdict(ok):
    return "met" if ok else "**not met**"


def _targets(checks):
    """'target: met' for each (target, ok) pair, joined."""
    return "; ".join(f"{t}: {_verdict(ok)}" for t, ok in checks)


def notes(load):
    d = load("structured")
    out = []
    s = d.get("vgg-slimming")
    if s:
        checks = [("≥ 60% of channels", s["channels_removed"] >= 0.6 - 1e-9), ("≤ 0.5 pt", _pt(s) >= -0.5),
                  ("≥ 3× fewer FLOPs", _ratio(s, "flops", True) >= 3),
                  ("≥ 2× at both batch sizes",
                   _ratio(s, "latency_ms_b1", True) >= 2 and _ratio(s, "throughput") >= 2)]
        out.append(f"- Network Slimming on `vgg`: {s['channels_removed'] * 100:.0f}% of the channels removed at "
                   f"{_pt(s):+.2f} pt, {_ratio(s, 'flops', True):.1f}× fewer FLOPs, measured "
                   f"{_ratio(s, 'latency_ms_b1', True):.1f}× faster at batch 1 and {_ratio(s, 'throughput'):.1f}× "
                   f"at batch 256. Targets: {_targets(checks)}.")
    q = d.get("vgg-slimming-int8")
    if q:
        checks = [("≥ 12× smaller", _ratio(q, "size_bytes", True) >= 12),
                  ("≥ 4× throughput", _ratio(q, "throughput") >= 4), ("≤ 0.7 pt", _pt(q) >= -0.7)]
        out.append(f"- Slimmed + static int8: {_ratio(q, 'size_bytes', True):.1f}× smaller file, "
                   f"{_ratio(q, 'throughput'):.1f}× the original's batch-256 throughput, {_pt(q):+.2f} pt. "
                   f"Targets: {_targets(checks)}.")
    for key, flops, pts in (("resnet-channel-50", 0.5, 1.0), ("densenet-channel-40", 0.4, 1.0)):
        e = d.get(key)
        if e:
            removed = 1 - e["flops"] / e["baseline_flops"]
            out.append(f"- `{key}`: {removed * 100:.0f}% of FLOPs removed at {_pt(e):+.2f} pt, "
                       f"{_ratio(e, 'latency_ms_b1', True):.2f}× at batch 1 and {_ratio(e, 'throughput'):.2f}× "
                       f"at batch 256. Target (≥ {flops * 100:.0f}% at ≤ {pts:.0f} pt): "
                       f"{_verdict(removed >= flops - 1e-9 and _pt(e) >= -pts)}.")
    crit = {k: e for k, e in d.items() if k.startswith("vgg-") and "-60" in k}
    if crit:
        best = max(crit, key=lambda k: crit[k]["accuracy"])
        out.append(f"- At equal FLOPs and budget the best criterion on `vgg` is `{best}` "
                   f"({crit[best]['accuracy'] * 100:.2f}%, of {len(crit)} compared).")
    glob = {k: e for k, e in crit.items() if k.endswith("-global")}
    if glob and len(glob) < len(crit):
        more = [k for k, e in glob.items() if e["params"] > crit[k[:-len("-global")]]["params"]]
        if more:
            out.append(f"- For the same FLOPs, global allocation by FLOPs freed keeps more parameters than uniform "
                       f"in {', '.join(f'`{k}`' for k in sorted(more))}: it thins the early full-resolution layers, "
                       "where a channel costs the most FLOPs and the fewest parameters.")
    pairs = [(p, d[f"minilm-heads-ffn-{p}"], d[f"minilm-heads-ffn-{p}-norm"]) for p in (10, 20, 30, 40, 50)
             if f"minilm-heads-ffn-{p}" in d and f"minilm-heads-ffn-{p}-norm" in d]
    if pairs:
        gaps = [c["spearman"] - n["spearman"] for _, c, n in pairs]
        above = [f"{p}%" for p, c, _ in pairs if c["spearman"] > c["baseline"]]
        out.append(f"- On MiniLM the calibrated score beats the weight norm at every fraction, by "
                   f"{min(gaps):.1f}–{max(gaps):.1f} pt without recovery"
                   + (f"; at {' and '.join(above)} removed the pruned encoder scores above the original" if above else "")
                   + ".")
    trios = [(p, d[f"minilm-heads-ffn-{p}"], d[f"minilm-heads-ffn-{p}-global"]) for p in (10, 20, 30, 40, 50)
             if f"minilm-heads-ffn-{p}" in d and f"minilm-heads-ffn-{p}-global" in d]
    if trios:
        gaps = [g["spearman"] - u["spearman"] for _, u, g in trios]
        lat = lambda e: _ratio(e, "latency_ms_b1")
        chan = lambda e: e["channels_removed"] * 100
        slower = sum(lat(g) > lat(u) for _, u, g in trios)
        at30 = next(((u, g) for p, u, g in trios if p == 30), None)
        detail = (f" (at 30%: {lat(at30[1]):.3f}× against {lat(at30[0]):.3f}× the original's; "
                  f"{chan(at30[1]):.0f}% of the channels removed against {chan(at30[0]):.0f}%)" if at30 else "")
        out.append(f"- The same calibrated score ranked across layers (`-global`) scores "
                   f"{min(gaps):+.2f} to {max(gaps):+.2f} pt against the same fraction per layer (uniform); "
                   f"its encoder is the slower one at batch 1 at {slower} of {len(trios)} fractions{detail}: "
                   f"for the same parameters it removes more FFN units and fewer heads, and a head also costs "
                   f"the attention core's work, which its parameters do not count.")
    m, r = d.get("minilm-heads-ffn-30"), d.get("minilm-heads-ffn-30-recovered")
    if m:
        sp = _delivered(m, r)
        lat, thr = _ratio(sp, "latency_ms_b1"), _ratio(sp, "throughput")
        checks = [("≤ 1.0 pt after recovery", r is not None and _pt(r) >= -1.0),
                  ("batch-1 latency ≤ 0.75×", lat <= 0.75), ("batch-32 throughput ≥ 1.3×", thr >= 1.3)]
        line = (f"- MiniLM at 30% removed: {_pt(m):+.2f} pt without recovery"
                + (f", {_pt(r):+.2f} pt after {r['finetune_seconds'] / 60:.1f} min of recovery" if r else "")
                + f"; batch-1 latency {lat:.2f}× the original's, batch-32 throughput {thr:.2f}×"
                + (f" (the recovered encoder on {sp['cpu']}, {_rounds(sp)})" if r else "") + ". "
                f"Targets: {_targets(checks)}.")
        out.append(line)
    return _minus("\n".join(out))
