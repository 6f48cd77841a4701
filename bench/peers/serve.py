"""The serve loop the peer scripts share (`--serve`): print {"ready": fixed}, then answer
each `round` line on stdin with {"round": one_round()} until `quit`; `squeeze bench text`
and `squeeze bench quant` drive it so that their models and the peer's alternate within
each round."""
import json
import sys


def serve(fixed, one_round):
    print(json.dumps({"ready": fixed}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "round":
            print(json.dumps({"round": one_round()}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
