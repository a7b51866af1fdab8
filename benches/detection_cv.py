#!/usr/bin/env python3
"""Cross-validated choice of `[detect.univariate]` between two labelled corpora.

    python3 benches/detection_cv.py --homeostat BIN [--grid GRID.json] [--out DIR]

For every point of the grid (a JSON object: key -> list of values, over the
shipped defaults), replays NAB and kpi-dev with `homeostat replay --config` and
scores both with the NAB scorer at the point's own `fire` threshold (the one a
user would ship). Then:

- tuned on NAB, reported on kpi-dev: the point best on NAB, and its kpi-dev score;
- tuned on kpi-dev, reported on NAB: the mirror;
- the shipped candidate: the point with the best mean of the two scores (the
  corpora weighted alike); in-sample on both, and labelled so.

Reads the corpora from ../shared (the team's, not shipped): this is a benchmark,
not a test. Standard library only, like the scorer. Every score is printed with
the corpus it was tuned on, so no in-sample figure passes for an out-of-sample one.
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared"))
CORPORA = {
    "nab": ("nab/data", "nab/labels/combined_windows.json"),
    "kpi": ("kpi-dev/data", "kpi-dev/combined_windows.json"),
}
# The rolling z-score of ../shared/kpi-dev/baselines.py at its best threshold
# (standard profile), as that README and ../shared/nab/README.md report it.
ZSCORE = {"nab": 20.8, "kpi": 63.9}


def score(homeostat, corpus, params, work, fire):
    data, labels = (os.path.join(SHARED, p) for p in CORPORA[corpus])
    key = "-".join(f"{k}={v}" for k, v in sorted(params.items())) or "defaults"
    out = os.path.join(work, corpus, key)
    os.makedirs(work, exist_ok=True)
    config = os.path.join(work, f"{key}.toml")
    with open(config, "w") as fh:
        fh.write("[detect.univariate]\n")
        for k, v in sorted(params.items()):
            fh.write(f"{k} = {json.dumps(v)}\n")
    subprocess.run([homeostat, "replay", "--config", config, "--input", data, "--output", out],
                   check=True, stdout=subprocess.DEVNULL)
    summary = os.path.join(out, "summary.json")
    subprocess.run([sys.executable, os.path.join(SHARED, "nab", "nab_score.py"), "--data", data,
                    "--labels", labels, "--results", out, "--profile", "standard",
                    "--threshold", str(fire), "--json-out", summary, "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    with open(summary) as fh:
        return json.load(fh)["profiles"]["standard"]["score"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--homeostat", required=True, help="the release binary")
    ap.add_argument("--grid", help="JSON file: parameter -> list of values (default: none, "
                                   "the shipped parameters alone)")
    ap.add_argument("--out", help="working directory (default: a temporary one)")
    args = ap.parse_args()
    grid = {}
    if args.grid:
        with open(args.grid) as fh:
            grid = json.load(fh)
    work = args.out or tempfile.mkdtemp(prefix="homeostat-cv-")
    keys = sorted(grid)
    rows = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        fire = params.get("fire", 0.998)
        s = {c: score(args.homeostat, c, params, work, fire) for c in CORPORA}
        rows.append((params, s))
        print(json.dumps(params), " ".join(f"{c}={s[c]:.1f}" for c in CORPORA), flush=True)

    def mean(s):
        return sum(s.values()) / len(s)

    print("\nchosen on one corpus, reported on the other (out of sample):")
    for tuned, other in (("nab", "kpi"), ("kpi", "nab")):
        params, s = max(rows, key=lambda r: r[1][tuned])
        print(f"  tuned on {tuned}: {json.dumps(params)} -> {other} {s[other]:.1f} "
              f"(in-sample {tuned} {s[tuned]:.1f})")
    params, s = max(rows, key=lambda r: mean(r[1]))
    print(f"shipped candidate (best mean of the two): {json.dumps(params)} "
          + " ".join(f"{c} {s[c]:.1f} (z-score {ZSCORE[c]})" for c in CORPORA)
          + "  [in-sample on both]")


if __name__ == "__main__":
    main()
