#!/usr/bin/env python3
"""Unlabelled English sentences for distilling sentence encoders: the usage examples of
WordNet 3.0 (Princeton University; WordNet 3.0 license, permissive: use, copy, modify and
distribute for any purpose without fee, keeping the copyright notice), read from the Debian
package `wordnet-base` (installed here if missing). Writes one sentence per line to
data/wordnet/examples.txt (not committed) with the license beside it, deduplicated, in
file order, keeping examples of at least four words.
    usage: python3 scripts/wordnet-sentences.py
"""
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = pathlib.Path("/usr/share/wordnet")
OUT = ROOT / "data" / "wordnet"


def ensure_package():
    if (SRC / "data.noun").is_file():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "wordnet-base"], check=True)


def examples(path):
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # the license header, or a line without a gloss
        for part in line.split("|", 1)[1].split(";"):
            part = part.strip()
            if len(part) > 2 and part.startswith('"') and part.endswith('"'):
                text = part[1:-1].strip()
                if len(text.split()) >= 4:
                    yield text


def main():
    ensure_package()
    seen, out = set(), []
    for pos in ["noun", "verb", "adj", "adv"]:
        for s in examples(SRC / f"data.{pos}"):
            if s not in seen:
                seen.add(s)
                out.append(s)
    if not out:
        sys.exit(f"no examples found under {SRC}")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "examples.txt.tmp"
    tmp.write_text("\n".join(out) + "\n")
    tmp.replace(OUT / "examples.txt")
    shutil.copyfile("/usr/share/doc/wordnet-base/copyright", OUT / "LICENSE")
    print(f"{len(out)} sentences → {OUT / 'examples.txt'}")


if __name__ == "__main__":
    main()
