#!/usr/bin/env python3
"""Tables of bench/battery_bench.sh from its JSON lines (medians)."""
import argparse
import json
import statistics


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--note", default="")
    ap.add_argument("--seqs", type=int, default=16)
    a = ap.parse_args()
    recs = [json.loads(l) for l in open(a.jsonl) if l.strip()]
    presets = []
    for r in recs:
        if r["preset"] not in presets:
            presets.append(r["preset"])
    print("## Battery v1 per checkpoint (medians)\n")
    print(a.note + "\n")
    for p in presets:
        fwd = [r["line"] for r in recs if r["preset"] == p and r["kind"] == "forward"]
        sg = [r["line"] for r in recs if r["preset"] == p and r["kind"] == "sgemm"]
        fwd_rate = med([x["gflops"] for x in fwd]) * 1e9  # flop/s of a plain forward
        fwd_s = med([x["seconds"] for x in fwd])
        sg_rate = med([x["gflops"] for x in sg])
        one_fwd_flop = med([x["gflop"] for x in fwd]) * 1e9  # one forward at 8 x CTX
        print(f"### {p}\n")
        print(f"Baselines: plain forward {fwd_rate / 1e9:.1f} GFLOP/s ({fwd_s:.2f} s per 8-sequence batch); "
              f"plain sgemm on the model's shapes {sg_rate:.1f} GFLOP/s.\n")
        print("| item | seconds | forwards run (eval-set equivalents) | seconds / their forward time | outside BLAS | sgemm GFLOP/s | sgemm / plain sgemm |")
        print("|---|---|---|---|---|---|---|")
        items = []
        for r in recs:
            if r["preset"] == p and r["kind"] == "item" and r["item"] not in items:
                items.append(r["item"])
        tot_s = tot_fwd_s = 0.0
        for it in items:
            rs = [r for r in recs if r["preset"] == p and r["kind"] == "item" and r["item"] == it]
            s = med([r["seconds"] for r in rs])
            ff = med([r.get("forward_flop", 0.0) for r in rs])
            fwd_time = ff / fwd_rate if fwd_rate > 0 else float("nan")
            out = med([max(0.0, 1 - r["blas"]["blas_s"] / r["seconds"]) for r in rs if r["seconds"] > 0])
            sgs = [r["blas"]["sgemm_flop"] / r["blas"]["sgemm_s"] / 1e9 for r in rs if r["blas"]["sgemm_s"] > 0]
            sgr = med(sgs)
            tot_s += s
            tot_fwd_s += fwd_time
            eq = ff / (one_fwd_flop * a.seqs / 8) if one_fwd_flop else float("nan")
            ratio = f"{s / fwd_time:.2f}" if fwd_time > 0 else "— (no forward)"
            print(f"| `{it}` | {s:.2f} | {eq:.2f} | {ratio} | {out:.0%} | {sgr:.1f} | {sgr / sg_rate:.2f} |")
        ratio = f"{tot_s / tot_fwd_s:.2f}" if tot_fwd_s > 0 else "—"
        print(f"| **total** | {tot_s:.2f} | | {ratio} | | | |\n")


if __name__ == "__main__":
    main()
