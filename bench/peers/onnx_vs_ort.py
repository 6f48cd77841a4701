#!/usr/bin/env python3
"""squeeze's int8 ONNX export of all-MiniLM-L6-v2 against ONNX Runtime's own dynamic int8
quantizations of the PyTorch export (`ort_int8`: plain graph, per-tensor weights;
`ort_int8_opt_pc`: transformer-optimized graph, per-channel weights), all three run by
ONNX Runtime in this one process, round-robin for ROUNDS rounds (the order rotating), each
round: batch-1 median latency over the first N_LATENCY STS-B dev sentences and batch-32
throughput over all of them (the same measurement as minilm_peer.py). Prints JSON: per
file and round the values, and per ORT file the median and range of the rounds' ratios
(ours over theirs).

usage: onnx_vs_ort.py MODEL_DIR EXPORT_DIR STS_FILE N_LATENCY ROUNDS
"""
import json
import statistics
import sys
import tempfile
import time

from minilm_peer import measure, ort_embed, ort_sessions, sentences, squeeze_onnx_peer
from transformers import AutoTokenizer

SETTLE = 1.0  # idle seconds between files: ONNX Runtime's workers spin after their last task


def main():
    model_dir, export, sts, n_lat, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    texts = sentences(sts)
    tok = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = ort_sessions(model_dir, tmp)
    files = {"onnx_int8": squeeze_onnx_peer(export, tok)}
    for k in ["ort_int8", "ort_int8_opt_pc"]:
        files[k] = ort_embed(sessions[k], tok)
    names = list(files)
    per = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {}
        for k in order:
            time.sleep(SETTLE)
            got[k] = measure(files[k], texts, n_lat)
        for k in names:
            per[k].append({"latency_ms_b1": got[k][0], "throughput_b32": got[k][1]})
    out = {"rounds": rounds, "latency_sentences": n_lat, "per_round": per}
    for k in ["ort_int8", "ort_int8_opt_pc"]:
        lat = [a["latency_ms_b1"] / b["latency_ms_b1"] for a, b in zip(per["onnx_int8"], per[k])]
        thr = [a["throughput_b32"] / b["throughput_b32"] for a, b in zip(per["onnx_int8"], per[k])]
        out[f"latency_ratio_vs_{k}"] = statistics.median(lat)
        out[f"latency_ratio_vs_{k}_range"] = [min(lat), max(lat)]
        out[f"throughput_ratio_vs_{k}"] = statistics.median(thr)
        out[f"throughput_ratio_vs_{k}_range"] = [min(thr), max(thr)]
    for k in names:
        out[f"{k}_latency_ms_b1"] = statistics.median(x["latency_ms_b1"] for x in per[k])
        out[f"{k}_throughput_b32"] = statistics.median(x["throughput_b32"] for x in per[k])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
