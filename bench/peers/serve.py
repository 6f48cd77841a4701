"""The serve loop the peer scripts share (`--serve`): print {"ready": fixed}, then answer
each `round` line on stdin with {"round": one_round()} until `quit`; `squeeze bench text`
and `squeeze bench quant` drive it so that their models and the peer's alternate within
each round. Before answering, the peer idles for SETTLE seconds: ONNX Runtime's and
OpenMP's worker threads spin for a while after their last task, and must not take the
cores from the round that follows."""
import json
import sys
import time

SETTLE = 1.0


def serve(fixed, one_round):
    print(json.dumps({"ready": fixed}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "round":
            out = one_round()
            time.sleep(SETTLE)
            print(json.dumps({"round": out}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
