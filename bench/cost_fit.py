#!/usr/bin/env python3
"""Fit the cost model's per-item factors (daemon/plan/cost.c's table) from
bench/battery_bench.sh's JSON lines, and say how well each fit predicts
the other model size.

    bench/cost_fit.py build/bench/battery.jsonl [--out bench/data/cost_factors.tsv]

The model (daemon/plan/cost.h): an item's seconds are k(item) times its
analytic FLOPs (`ckptd plan`'s gflop, the same shape and eval set) over
the node's plain-forward rate.  Measured in CPU seconds, which other
processes on a shared machine do not stretch, the rate is the shared eval
forward's own: its GFLOP over its CPU seconds in the same worker.  So per
item and preset

    k = (item CPU s / item GFLOP) * (forward GFLOP / forward CPU s)

(= battery_report.py's "k fitted").  Three fits:
  - on the smaller preset alone, used to predict the larger;
  - on the larger alone, used to predict the smaller;
  - on both: least squares of log(predicted / measured) over the two,
    i.e. the geometric mean of the two k (the committed table).
Sweep checkpoints (`--full-sweep`) use the item's ordinary k on its sweep
work: their prediction error is reported, not fitted.

Output: a Markdown table to stdout (k per fit, each item's predicted CPU s
against the measured, the per-checkpoint totals and their error) and, with
--out, the factors as a small TSV (item, k), the table cost.c carries.
"""
import argparse
import json
import math
import statistics


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def load(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    out = {}
    for p in dict.fromkeys(r["preset"] for r in recs):
        mine = [r for r in recs if r["preset"] == p]
        bat = [r for r in mine if r["kind"] == "battery"]
        plan = next((r["plan"] for r in mine if r["kind"] == "plan"), None)
        sweep = [r for r in mine if r["kind"] == "sweep"]
        if not bat or not plan:
            continue
        fwd_cpu = med([r["pass"]["forward_cpu_seconds"] for r in bat])
        d = {
            "fwd_cpu": fwd_cpu,
            "pass_gflop": plan["pass_gflop"],
            "rate": plan["pass_gflop"] / fwd_cpu,  # GFLOP per CPU second
            "items": {},
            "sweep": {},
            "cpu": med([r.get("cpu") for r in bat]),
        }
        pitems = {x["item"]: x for x in plan["items"]}
        for it in bat[0]["items"]:
            pi = pitems.get(it)
            if not pi or not pi.get("known") or pi["gflop"] <= 0:
                continue
            d["items"][it] = {
                "cpu": med([r["items"].get(it, {}).get("cpu_seconds") for r in bat]),
                "gflop": pi["gflop"],
                "sweep_gflop": pi["sweep_gflop"],
            }
        for r in sweep:
            for it, v in r["items"].items():
                d["sweep"][it] = v["cpu_seconds"]
        out[p] = d
    return out


def kfit(d, it):
    x = d["items"][it]
    return x["cpu"] / x["gflop"] * d["rate"]


def predict(d, it, k, sweep=False):
    x = d["items"][it]
    return k * (x["sweep_gflop"] if sweep else x["gflop"]) / d["rate"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--out")
    a = ap.parse_args()
    data = load(a.jsonl)
    presets = list(data)
    if len(presets) < 2:
        raise SystemExit("cost_fit: needs two presets with a battery run and a plan")
    small, large = presets[0], presets[1]
    S, L = data[small], data[large]
    # items measured on both (an item of ~0 CPU s, `circuit`, has no factor to fit)
    items = [it for it in S["items"] if it in L["items"]
             and S["items"][it]["cpu"] >= 0.01 and L["items"][it]["cpu"] >= 0.01]
    fits = {}
    for it in items:
        ks, kl = kfit(S, it), kfit(L, it)
        both = math.exp((math.log(ks) + math.log(kl)) / 2) if ks > 0 and kl > 0 else (ks + kl) / 2
        fits[it] = (ks, kl, both)
    print(f"## Cost model factors fitted on {small} and {large}\n")
    print(f"Plain-forward rate in CPU terms: {small} {S['rate']:.1f} GFLOP per CPU s, "
          f"{large} {L['rate']:.1f}.\n")
    print(f"| item | k ({small}) | k ({large}) | k (both, committed) | {large} CPU s measured | "
          f"predicted from {small}'s k | error | {small} CPU s measured | predicted from "
          f"{large}'s k | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tot = {"Lm": L["fwd_cpu"], "Lp": L["fwd_cpu"], "Sm": S["fwd_cpu"], "Sp": S["fwd_cpu"],
           "Lb": L["fwd_cpu"], "Sb": S["fwd_cpu"]}
    for it in items:
        ks, kl, both = fits[it]
        lm, lp = L["items"][it]["cpu"], predict(L, it, ks)
        sm, sp = S["items"][it]["cpu"], predict(S, it, kl)
        tot["Lm"] += lm
        tot["Lp"] += lp
        tot["Sm"] += sm
        tot["Sp"] += sp
        tot["Lb"] += predict(L, it, both)
        tot["Sb"] += predict(S, it, both)
        print(f"| `{it}` | {ks:.2f} | {kl:.2f} | {both:.2f} | {lm:.1f} | {lp:.1f} | "
              f"{(lp / lm - 1) * 100:+.0f} % | {sm:.1f} | {sp:.1f} | {(sp / sm - 1) * 100:+.0f} % |")
    print(f"| shared forward | 1 | 1 | 1 | {L['fwd_cpu']:.1f} | {L['fwd_cpu']:.1f} | | "
          f"{S['fwd_cpu']:.1f} | {S['fwd_cpu']:.1f} | |")
    print(f"| **per checkpoint** | | | | {tot['Lm']:.1f} | {tot['Lp']:.1f} | "
          f"{(tot['Lp'] / tot['Lm'] - 1) * 100:+.0f} % | {tot['Sm']:.1f} | {tot['Sp']:.1f} | "
          f"{(tot['Sp'] / tot['Sm'] - 1) * 100:+.0f} % |\n")
    print(f"With the committed factors (both sizes): {large} {tot['Lb']:.1f} CPU s projected "
          f"against {tot['Lm']:.1f} measured ({(tot['Lb'] / tot['Lm'] - 1) * 100:+.0f} %), "
          f"{small} {tot['Sb']:.1f} against {tot['Sm']:.1f} "
          f"({(tot['Sb'] / tot['Sm'] - 1) * 100:+.0f} %).\n")
    sw = [(p, it) for p in (small, large) for it in data[p]["sweep"] if it in fits]
    if sw:
        print("Sweep checkpoints (the item's ordinary k on its full-sweep work):\n")
        print("| preset | item | CPU s measured | predicted (committed k) | error |")
        print("|---|---|---|---|---|")
        for p, it in sw:
            m = data[p]["sweep"][it]
            pr = predict(data[p], it, fits[it][2], sweep=True)
            print(f"| {p} | `{it}` | {m:.1f} | {pr:.1f} | {(pr / m - 1) * 100:+.0f} % |")
        print()
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"# cost model factors k (daemon/plan/cost.c), fitted by bench/cost_fit.py on "
                    f"{small} and {large}: geometric mean of the two presets' k\n")
            f.write("item\tk\tk_" + small + "\tk_" + large + "\n")
            for it in items:
                ks, kl, both = fits[it]
                f.write(f"{it}\t{both:.2f}\t{ks:.2f}\t{kl:.2f}\n")
        print(f"Factors written to {a.out}.")


if __name__ == "__main__":
    main()
