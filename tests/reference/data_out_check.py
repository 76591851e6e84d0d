#!/usr/bin/python3
"""data_out_check.py - run the recipes of docs/data-out.md against a real run
and check that every way out of the database gives the same numbers.

    data_out_check.py --doc docs/data-out.md --run RUN --csv FILE --jsonl FILE --npy DIR

Runs each ```python block whose first line is "# recipe: NAME" as it is
written (the environment carries CKPTD_RUN and the export paths; libpq's
PG* variables carry the database), then checks, against the base tables
read here with psycopg2 (measurements, metrics, checkpoints: not the
`series` view the recipes use):

  series-pivot  `ind` has one row per analysed step that is not a duplicate
                checkpoint, one column per (layer, head) of induction_score,
                and each cell is the stored value;
  csv-pivot     `ind_csv` equals `ind` exactly (the CSV's digits read back
                the same doubles), and the CSV holds every value of the run;
  jsonl         `rows_jsonl` holds the same rows as the CSV, value for
                value; `loss` is the loss series;
  npy           `ind_npy` is (steps, layers, heads) and equals `ind` cell
                for cell; every array of index.json has the shape its coords
                say, NaN exactly where the run has no value, and the values
                the database holds.

Exit 0 when every check holds, 1 otherwise (each failure printed).
"""
import argparse
import json
import math
import os
import re
import sys

import numpy as np
import pandas as pd
import psycopg2

FAILS = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        FAILS.append(what)


def recipes(doc):
    text = open(doc).read()
    out = {}
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        first = block.split("\n", 1)[0]
        m = re.match(r"# recipe: (\S+)", first)
        if m:
            out[m.group(1)] = block
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--npy", required=True)
    a = ap.parse_args()
    os.environ.update(CKPTD_RUN=a.run, CKPTD_EXPORT_CSV=a.csv, CKPTD_EXPORT_JSONL=a.jsonl, CKPTD_EXPORT_NPY=a.npy)

    # the truth, from the base tables
    conn = psycopg2.connect("")
    cur = conn.cursor()
    cur.execute(
        "SELECT mt.item, mt.version, mt.name, m.layer, m.head, m.idx, m.step, m.value"
        " FROM measurements m JOIN metrics mt ON mt.id = m.metric_id JOIN runs r ON r.id = m.run_id"
        " WHERE r.name = %s AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.run_id = m.run_id"
        "   AND c.step = m.step AND c.duplicate_of IS NOT NULL)", (a.run,))
    truth = {(i, v, n, l, h, x, s): val for i, v, n, l, h, x, s, val in cur.fetchall()}
    cur.execute("SELECT c.step FROM checkpoints c JOIN runs r ON r.id = c.run_id"
                " WHERE r.name = %s AND c.duplicate_of IS NOT NULL", (a.run,))
    dup_steps = {s for (s,) in cur.fetchall()}
    conn.close()
    check(len(truth) > 0, "the run has values (%d)" % len(truth))
    ind_truth = {(l, h, s): v for (i, _, n, l, h, x, s), v in truth.items() if i == "heads" and n == "induction_score"}
    steps = sorted({s for _, _, s in ind_truth})
    lh = sorted({(l, h) for l, h, _ in ind_truth})

    ns = {}
    got = recipes(a.doc)
    for name in ("series-pivot", "csv-pivot", "jsonl", "npy"):
        check(name in got, "docs recipe %s present" % name)
        if name in got:
            env = {"__name__": "__recipe__"}
            try:
                exec(compile(got[name], "%s:%s" % (a.doc, name), "exec"), env)
                check(True, "recipe %s ran" % name)
            except Exception as ex:  # the recipe as a reader would run it
                check(False, "recipe %s ran: %r" % (name, ex))
            ns.update({k: v for k, v in env.items() if not k.startswith("__")})
    if FAILS:
        return 1

    ind = ns["ind"]
    check(list(ind.index) == steps, "series-pivot: one row per step, duplicates left out (%d)" % len(steps))
    check(not dup_steps & set(ind.index), "series-pivot: no duplicate checkpoint's step %s" % sorted(dup_steps))
    check([tuple(c) for c in ind.columns] == lh, "series-pivot: one column per (layer, head) (%d)" % len(lh))
    check(all(ind.loc[s, (l, h)] == v for (l, h, s), v in ind_truth.items()),
          "series-pivot: every cell is the stored value")

    ind_csv = ns["ind_csv"]
    check(ind_csv.shape == ind.shape and (ind_csv.values == ind.values).all(),
          "csv-pivot: equal to series-pivot, value for value")
    rows = pd.read_csv(a.csv, keep_default_na=False, float_precision="round_trip")
    check(list(rows.columns) == ["run", "step", "item", "version", "metric", "layer", "head", "idx", "value", "unit"],
          "csv: the header")
    csv_map = {(r.item, r.version, r.metric, r.layer, r.head, r.idx, r.step): r.value for r in rows.itertuples()}
    check(len(rows) == len(truth) and csv_map == truth, "csv: every value of the run, exactly (%d)" % len(rows))
    check((rows["run"] == a.run).all(), "csv: the run named on every row")

    rj = ns["rows_jsonl"]
    check(list(rj.columns) == list(rows.columns), "jsonl: the same keys in the same order")
    j_map = {(r.item, r.version, r.metric, r.layer, r.head, r.idx, r.step): r.value for r in rj.itertuples()}
    check(j_map == truth, "jsonl: every value of the run, exactly (%d)" % len(rj))
    loss = ns["loss"]
    want_loss = {s: v for (i, _, n, l, h, x, s), v in truth.items() if i == "loss" and n == "loss"}
    check(loss.to_dict() == want_loss, "jsonl: the loss series (%d steps)" % len(want_loss))

    ind_npy = ns["ind_npy"]
    check(ind_npy.shape == (len(steps), len({l for l, _ in lh}), len({h for _, h in lh})),
          "npy: induction_score is (steps, layers, heads) %s" % (ind_npy.shape,))
    check(ind_npy.shape[0] * ind_npy.shape[1] * ind_npy.shape[2] == ind.size and
          (ind_npy.reshape(len(steps), -1) == ind.values).all(), "npy: equal to series-pivot, cell for cell")
    index = json.load(open(os.path.join(a.npy, "index.json")))
    names = {(i, v, n) for (i, v, n, *_rest) in truth}
    check(len(index["arrays"]) == len(names), "npy: one array per metric (%d)" % len(names))
    bad = []
    for arr in index["arrays"]:
        x = np.load(os.path.join(a.npy, arr["file"]))
        if x.dtype != np.dtype("<f8") or list(x.shape) != arr["shape"]:
            bad.append("%s: dtype %s shape %s" % (arr["file"], x.dtype, x.shape))
            continue
        if [len(arr["coords"][ax]) for ax in arr["axes"]] != arr["shape"] or arr["axes"][0] != "step":
            bad.append("%s: axes and coords disagree" % arr["file"])
            continue
        want = {k: v for k, v in truth.items() if k[:3] == (arr["item"], arr["version"], arr["metric"])}
        seen = 0
        for cell in np.ndindex(*x.shape):
            co = dict(zip(arr["axes"], (arr["coords"][ax][k] for ax, k in zip(arr["axes"], cell))))
            key = (arr["item"], arr["version"], arr["metric"], co.get("layer", -1), co.get("head", -1),
                   co.get("idx", -1), co["step"])
            if key in want:
                seen += 1
                if x[cell] != want[key]:
                    bad.append("%s%s: %r, stored %r" % (arr["file"], cell, x[cell], want[key]))
            elif not math.isnan(x[cell]):
                bad.append("%s%s: %r where the run has no value" % (arr["file"], cell, x[cell]))
        if seen != len(want) or arr["values"] != len(want):
            bad.append("%s: %d of %d values (index says %d)" % (arr["file"], seen, len(want), arr["values"]))
    check(not bad, "npy: every array holds the stored values, NaN elsewhere" + ("; " + "; ".join(bad[:5]) if bad else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
