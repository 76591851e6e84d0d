#!/usr/bin/env python3
"""Tables of bench/battery_bench.sh from its JSON lines (medians).

Per preset: the shared eval forward, each item, the checkpoint's load and
the whole worker.  Wall seconds (what this run took, on a machine shared
with whatever else ran), CPU seconds (the work), the forwards an item ran
beyond the shared one, and x_fwd: its CPU seconds over those of the shared
eval forward of the same process, a plain forward of the eval set — the
load-independent number.  The cost model's projection (`ckptd plan`) in the
same unit, its ratio to the measurement, and the item's k fitted (x_fwd
times the forward's GFLOP over the item's: the number daemon/plan/cost.c's
table holds).  Seconds at the reference rate (a quiet node, cost.c) are
x_fwd times the forward's GFLOP over that rate.  Then the series: Pythia's
154 checkpoints with their full sweeps; and the calibration over every
preset.
"""
import argparse
import json
import statistics

SERIES = 154


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def skeleton(count, every=32):
    return sum(1 for i in range(count) if i % every == 0 or i == count - 1)


def hours(s):
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


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
    print("## Battery per checkpoint (medians)\n")
    print(a.note + "\n")
    ks = {}
    nsweep = skeleton(SERIES)
    for p in presets:
        mine = [r for r in recs if r["preset"] == p]
        fwd = [r["line"] for r in mine if r["kind"] == "forward"]
        sg = [r["line"] for r in mine if r["kind"] == "sgemm"]
        rate = med([x["gflops"] for x in fwd])
        sg_rate = med([x["gflops"] for x in sg])
        bat = [r for r in mine if r["kind"] == "battery"]
        sweep = [r for r in mine if r["kind"] == "sweep"]
        plan = next((r["plan"] for r in mine if r["kind"] == "plan"), None)
        print(f"### {p}\n")
        if not bat or not plan:
            print("(no battery run or no plan)\n")
            continue
        ref = plan["gflops"]
        pass_gflop = plan["pass_gflop"]
        pitems = {x["item"]: x for x in plan["items"]}
        pf_cpu = med([r["pass"]["forward_cpu_seconds"] for r in bat])
        pf_wall = med([r["pass"]["forward_seconds"] for r in bat])
        unit_ref = pass_gflop / ref  # seconds of the shared forward at the reference rate
        print(f"bench_engine's plain forward (8 sequences): {rate:.1f} GFLOP/s wall; plain sgemm on "
              f"the model's shapes {sg_rate:.1f} GFLOP/s.  The shared eval forward: {pass_gflop:.0f} "
              f"GFLOP in {pf_wall:.2f} s wall, {pf_cpu:.2f} s CPU ({pass_gflop / pf_wall:.1f} GFLOP/s "
              f"wall); at the reference rate of {ref:.0f} GFLOP/s (`ckptd plan`'s default, a quiet "
              f"node) it takes {unit_ref:.2f} s.\n")
        print("| part | wall s | CPU s | forwards beyond the shared one | x_fwd (CPU / shared forward) "
              "| projected x_fwd | projected / measured | k fitted | s at the reference rate |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| shared eval forward | {pf_wall:.2f} | {pf_cpu:.2f} | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 "
              f"| {unit_ref:.1f} |")
        items = list(bat[0]["items"].keys())
        tot_x = 1.0
        tot_px = 1.0
        sweep_items = list(sweep[0].get("items", {}).keys()) if sweep else []
        sweep_extra = 0.0  # x_fwd a sweep checkpoint adds over an ordinary one
        sweep_extra_wall = sweep_extra_cpu = 0.0  # and seconds
        for it in items:
            s = med([r["items"].get(it, {}).get("seconds") for r in bat])
            c = med([r["items"].get(it, {}).get("cpu_seconds") for r in bat])
            ff = med([r["items"].get(it, {}).get("forward_flop") for r in bat]) / 1e9
            x = c / pf_cpu
            pi = pitems.get(it)
            px = pi["seconds"] * ref / pass_gflop if pi and pi["known"] else float("nan")
            k = x * pass_gflop / pi["gflop"] if pi and pi["gflop"] > 0 else float("nan")
            ks.setdefault(it, []).append(k)
            tot_x += x
            if px == px:
                tot_px += px
            print(f"| `{it}` | {s:.2f} | {c:.2f} | {ff / pass_gflop:.2f} | {x:.2f} | {px:.2f} | "
                  f"{px / x if x else float('nan'):.2f} | {k:.2f} | {x * unit_ref:.1f} |")
            if it in sweep_items:
                sw = sweep[0]["items"][it]
                sx = sw["cpu_seconds"] / pf_cpu
                sweep_extra += sx - x
                sweep_extra_wall += sw["seconds"] - s
                sweep_extra_cpu += sw["cpu_seconds"] - c
                psx = pi["sweep_seconds"] * ref / pass_gflop if pi and pi["known"] else float("nan")
                k = sx * pass_gflop / pi["sweep_gflop"] if pi and pi["sweep_gflop"] > 0 else float("nan")
                ks.setdefault(f"{it} (full sweep)", []).append(k)
                print(f"| `{it}`, full sweep | {sw['seconds']:.2f} | {sw['cpu_seconds']:.2f} | "
                      f"{sw['forward_flop'] / 1e9 / pass_gflop:.2f} | {sx:.2f} | "
                      f"{psx:.2f} | {psx / sx:.2f} | {k:.2f} | {sx * unit_ref:.1f} |")
        load = med([r.get("load") for r in bat])
        wall = med([r["wall"] for r in bat])
        cpu = med([r.get("cpu") for r in bat])
        print(f"| checkpoint load | {load:.2f} | | | | | | | |")
        print(f"| **per checkpoint** | {wall:.2f} | {cpu:.2f} | | {tot_x:.2f} | {tot_px:.2f} | "
              f"{tot_px / tot_x:.2f} | | **{tot_x * unit_ref:.1f}** |\n")
        at_sweep_x = tot_x + sweep_extra
        series_x = (SERIES - nsweep) * tot_x + nsweep * at_sweep_x
        proj_series_x = plan["series_seconds"] * ref / pass_gflop
        print(f"Series of {SERIES} checkpoints ({nsweep} of them full sweeps, "
              f"{at_sweep_x * unit_ref:.0f} s each at the reference rate): "
              f"{hours(series_x * unit_ref)} at the reference rate ({series_x * unit_ref / SERIES:.0f} s "
              f"per checkpoint on average), projected {hours(proj_series_x * unit_ref)} "
              f"({proj_series_x / series_x:.2f} of it); at this run's wall pace "
              f"{hours(series_x * pf_wall)}.\n")
        series_wall = SERIES * wall + nsweep * sweep_extra_wall
        series_cpu = SERIES * cpu + nsweep * sweep_extra_cpu
        print(f"Measured in this run: {wall:.0f} s wall and {cpu:.0f} CPU s per ordinary checkpoint, "
              f"{wall + sweep_extra_wall:.0f} s wall and {cpu + sweep_extra_cpu:.0f} CPU s per sweep "
              f"checkpoint; the series of {SERIES} ({nsweep} sweeps) at this run's pace: "
              f"{hours(series_wall)} wall ({series_wall / SERIES:.0f} s per checkpoint on average), "
              f"{hours(series_cpu)} CPU.\n")
        alone = [r for r in mine if r["kind"] == "alone"]
        if alone:
            print("Each item alone (its own forwards), under the BLAS timer:\n")
            print("| item | wall s | CPU s | outside BLAS | sgemm GFLOP/s | sgemm / plain |")
            print("|---|---|---|---|---|---|")
            for it in items:
                rs = [r for r in alone if it in r["items"]]
                if not rs:
                    continue
                s = med([r["items"][it]["seconds"] for r in rs])
                c = med([r["items"][it]["cpu_seconds"] for r in rs])
                out = med([max(0.0, 1 - r["blas"]["blas_s"] / r["wall"]) for r in rs])
                sgr = med([r["blas"]["sgemm_flop"] / r["blas"]["sgemm_s"] / 1e9 for r in rs
                           if r["blas"]["sgemm_s"] > 0])
                print(f"| `{it}` | {s:.2f} | {c:.2f} | {out:.0%} | {sgr:.1f} | {sgr / sg_rate:.2f} |")
            print()
    if ks:
        print("Calibration fitted over the presets (median k; daemon/plan/cost.c's table):\n")
        print("```")
        for name, v in ks.items():
            print(f"    {{\"{name}\", {med(v):.2f}}}, /* {', '.join(f'{x:.2f}' for x in v)} */")
        print("```")


if __name__ == "__main__":
    main()
