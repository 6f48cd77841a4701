"""The README's low-rank blocks, generated from results/lowrank.json (called by
readme_numbers.py, which passes its `load` and `table`). Rows appear for the experiments
the file holds; targets are the issue's, stated beside what was measured."""

from readme_structured import _machines, _minus, _targets, _verdict


def _ratio(e, key, inverse=False):
    a, b = e[key], e["baseline_" + key]
    return b / a if inverse else a / b


def _score(e, v):
    return f"{v:.2f}" if "spearman" in e else f"{v * 100:.2f}%"


def _pt(e, v=None):
    metric = "spearman" if "spearman" in e else "accuracy"
    v = e[metric] if v is None else v
    return (v - e["baseline"]) * (1 if metric == "spearman" else 100)


def _params_cut(e):
    if "factorized_params_before" in e:
        return f"{1 - e['factorized_params_after'] / e['factorized_params_before']:.0%} of them"
    return "—"


ROWS = (("mlp-svd-50", "`mlp`: SVD of fc1, fc2, 50% of their parameters kept"),
        ("vgg-svd-50", "`vgg`: convolutions 2–6, unfolding (k×k then 1×1), 50% kept"),
        ("vgg-spatial-svd-50", "`vgg`: the same convolutions, spatial SVD (k×1 then 1×k), 50% kept"),
        ("vgg-search-flops-33", "`vgg`: `squeeze search --budget flops=0.33`, searched per-layer ratios"),
        ("vgg-uniform-flops-33", "`vgg`: the same search's uniform ratio at the same budget"),
        ("vgg-knapsack-flops-33", "`vgg`: the same search's knapsack choice, fine-tuned without the hill climbing"),
        ("vgg-late-flops-33", "`vgg`: the opposite allocation at the same budget, the 7×7 convolutions kept the most"),
        ("minilm-svd-30", "MiniLM: every encoder Linear, plain SVD, 70% kept"),
        ("minilm-asvd-30", "MiniLM: the same, ASVD (per-channel RMS^0.5 scaling)"),
        ("minilm-whiten-30", "MiniLM: the same, whitened (SVD-LLM)"),
        ("minilm-whiten-30-recovered", "MiniLM: whitened, then 1 epoch of recovery distillation"),
        ("minilm-whiten-30-ffn", "MiniLM: about the same parameter count from the FFN Linears alone (rank 160), whitened"),
        ("minilm-whiten-30-ffn-recovered", "MiniLM: FFN-only whitened, then the same recovery"))


def block(load, table):
    d = load("lowrank")
    rows = []
    for key, what in ROWS:
        e = d.get(key)
        if not e:
            continue
        metric = "spearman" if "spearman" in e else "accuracy"
        rows.append([f"`{key}`", what, _score(e, e["baseline"]),
                     f"{_score(e, e['accuracy_before_finetune'])} ({_pt(e, e['accuracy_before_finetune']):+.2f})",
                     f"{_score(e, e[metric])} ({_pt(e):+.2f})",
                     f"{e['baseline_params']:,} → {e['params']:,}", f"{_ratio(e, 'flops', True):.2f}×",
                     f"{_ratio(e, 'latency_ms_b1'):.2f}×", f"{_ratio(e, 'throughput'):.2f}× (b{e['throughput_batch']})",
                     f"{e['finetune_seconds'] / 60:.1f} min"])
    head = ["key", "what", "original", "before fine-tuning (pt)", "after (pt)", "params", "fewer FLOPs",
            "batch-1 latency vs original", "throughput vs original", "fine-tuning"]
    return _minus(table(head, rows) + f"\n\nQuality: test accuracy (Fashion-MNIST) or STS-B dev Spearman; "
                  f"speeds against the original in the same run. {_machines(d)}")


def notes(load):
    d = load("lowrank")
    out = []
    for key in ("mlp-svd-50", "vgg-svd-50", "vgg-spatial-svd-50"):
        e = d.get(key)
        if e:
            out.append(f"- `{key}`: {_pt(e, e['accuracy_before_finetune']):+.2f} pt before and {_pt(e):+.2f} pt "
                       f"after fine-tuning. Target (≤ 0.5 pt after): {_verdict(_pt(e) >= -0.5)}.")
    u, s = d.get("vgg-svd-50"), d.get("vgg-spatial-svd-50")
    if u and s:
        out.append(f"- Spatial SVD against the unfolding at {_ratio(s, 'flops', True):.2f}× and "
                   f"{_ratio(u, 'flops', True):.2f}× fewer FLOPs: {_pt(s):+.2f} vs {_pt(u):+.2f} pt; "
                   f"batch-1 {_ratio(s, 'latency_ms_b1'):.2f}× vs {_ratio(u, 'latency_ms_b1'):.2f}× the original's "
                   f"latency, batch 256 {_ratio(s, 'throughput'):.2f}× vs {_ratio(u, 'throughput'):.2f}× its throughput.")
    p, a, w = (d.get(f"minilm-{m}-30") for m in ("svd", "asvd", "whiten"))
    if p and a and w:
        order = w["spearman"] > a["spearman"] > p["spearman"]
        out.append(f"- MiniLM at 30% fewer encoder Linear parameters, no fine-tuning: whitened {w['spearman']:.2f}, "
                   f"ASVD {a['spearman']:.2f}, plain {p['spearman']:.2f}. Target (whitened > ASVD > plain): "
                   f"{_verdict(order)}.")
    r = d.get("minilm-whiten-30-recovered")
    if r and w:
        checks = [("≤ 1.0 pt after recovery", _pt(r) >= -1.0),
                  ("batch-1 latency ≤ 0.8×", _ratio(w, "latency_ms_b1") <= 0.8),
                  ("batch-32 throughput ≥ 1.2×", _ratio(w, "throughput") >= 1.2)]
        out.append(f"- MiniLM whitened + recovery: {_pt(r):+.2f} pt; the factorized encoder's batch-1 latency "
                   f"{_ratio(w, 'latency_ms_b1'):.2f}× (recovered run {_ratio(r, 'latency_ms_b1'):.2f}×) and "
                   f"batch-32 throughput {_ratio(w, 'throughput'):.2f}× (recovered run {_ratio(r, 'throughput'):.2f}×) "
                   f"the original's. Targets: {_targets(checks)}.")
    w, r = d.get("minilm-whiten-30-ffn"), d.get("minilm-whiten-30-ffn-recovered")
    if r and w:
        checks = [("≤ 1.0 pt after recovery", _pt(r) >= -1.0),
                  ("batch-1 latency ≤ 0.8×", _ratio(w, "latency_ms_b1") <= 0.8),
                  ("batch-32 throughput ≥ 1.2×", _ratio(w, "throughput") >= 1.2)]
        uni = d.get("minilm-whiten-30")
        same = (f", against {uni['baseline_params'] - uni['params']:,} for the uniform cut" if uni else "")
        out.append(f"- MiniLM with the cut taken from the FFN Linears alone ({_params_cut(w)[:-len(' of them')]} of the FFN Linears' "
                   f"parameters: {w['baseline_params'] - w['params']:,} fewer in all{same}; 36 products per "
                   f"sentence instead of 60): {_pt(w):+.2f} pt before and "
                   f"{_pt(r):+.2f} pt after recovery; batch-1 latency {_ratio(w, 'latency_ms_b1'):.2f}× "
                   f"(recovered run {_ratio(r, 'latency_ms_b1'):.2f}×), batch-32 throughput "
                   f"{_ratio(w, 'throughput'):.2f}× (recovered run {_ratio(r, 'throughput'):.2f}×) the original's. "
                   f"Targets: {_targets(checks)}.")
    s, u = d.get("vgg-search-flops-33"), d.get("vgg-uniform-flops-33")
    if s and u:
        ok = s["flops"] <= 0.33 * s["baseline_flops"] and s["accuracy"] > u["accuracy"]
        out.append(f"- `squeeze search` on `vgg` at `flops=0.33`: the searched ratios keep "
                   f"{s['flops'] / s['baseline_flops']:.3f} of the FLOPs at {_pt(s):+.2f} pt, the uniform ratio "
                   f"{u['flops'] / u['baseline_flops']:.3f} at {_pt(u):+.2f} pt, with equal fine-tuning. The scan took "
                   f"{s['scan_seconds']:.0f} s, the whole search {s['search_wall_s'] / 60:.1f} min. Targets: "
                   f"{_targets([('meets the budget, less loss than uniform', ok), ('scan under 10 minutes', s['scan_seconds'] < 600)])}.")
        if "accuracy_seed1" in s and "accuracy_seed1" in u:
            out.append(f"- The same two recipes fine-tuned with seed 1 instead of 0: searched "
                       f"{_score(s, s['accuracy_seed1'])}, uniform {_score(u, u['accuracy_seed1'])} "
                       f"(seed 0: {_score(s, s['accuracy'])} and {_score(u, u['accuracy'])}); over the two "
                       f"seeds the searched ratios end at {_pt(s, (s['accuracy'] + s['accuracy_seed1']) / 2):+.2f} pt "
                       f"on average, the uniform ratio at {_pt(u, (u['accuracy'] + u['accuracy_seed1']) / 2):+.2f} pt.")
    for key, what in (("vgg-knapsack-flops-33", "The knapsack's own choice fine-tuned as is, without the hill climbing"),
                      ("vgg-late-flops-33", "The opposite allocation, the two 7×7 convolutions kept the most")):
        k = d.get(key)
        if not k:
            continue
        ku = k["uniform_same_machine"]
        cut = ", ".join(f"{n.removesuffix('.conv')} {r}" for n, r in k["ratios"].items())
        out.append(f"- {what} (`recipes/{key}.toml`; kept: {cut}; {k['params']:,} parameters): "
                   f"{_score(k, k['accuracy'])} ({_pt(k):+.2f} pt) at {k['flops'] / k['baseline_flops']:.3f} "
                   f"of the FLOPs, against the uniform recipe's {_score(ku, ku['accuracy'])} ({_pt(ku):+.2f} pt; "
                   f"{ku['params']:,} parameters) at {ku['flops'] / ku['baseline_flops']:.3f} re-run on the same "
                   f"machine ({k['cpu']}).")
        if s and u and ku["cpu"] == u["cpu"]:
            if ku["accuracy"] != u["accuracy"]:
                how = f"{abs(ku['accuracy'] - u['accuracy']) * 100:.2f} pt apart"
            elif k.get("uniform_weights_equal_search_uniform"):
                how = "the same accuracy and the same weights, bit for bit"
            else:
                how = "the same accuracy"
            out.append(f"- The uniform recipe fine-tuned twice on that machine, inside the search and again "
                       f"through `squeeze compress`: {_score(u, u['accuracy'])} and "
                       f"{_score(ku, ku['accuracy'])}, {how}.")
    return _minus("\n".join(out))
