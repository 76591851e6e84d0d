#!/usr/bin/env python3
"""Turn bench/run's JSON lines (build/bench/engine.jsonl) into markdown tables.

    python3 bench/engine_report.py build/bench/engine.jsonl --best SkylakeX [--note TEXT]

Every input line is {"setting": "installed" | <core> | "-", "result": {...}}
where result is one line of bench_engine or torch_forward.py.  Standard
library only.  Missing measurements show as a dash.
"""
import argparse
import json
import statistics
import sys

DASH = "—"


def fmt(x, nd=0):
    return DASH if x is None else f"{x:,.{nd}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--best", default="", help="the forced OpenBLAS core ('' if none)")
    ap.add_argument("--note", default="")
    a = ap.parse_args()

    rows = []
    with open(a.jsonl) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))

    inst, best = "installed", a.best or "installed"
    runs = {}  # (bench, setting, preset, B, T, threads) -> result
    cores = {}  # (program, setting) -> set of reported cores
    cat_s, load, f16, phases = [], None, None, []
    for r in rows:
        s, d = r["setting"], r["result"]
        b = d["bench"]
        if b in ("forward", "sgemm", "torch_forward"):
            runs[(b, s, d["preset"], d["B"], d["T"], d["threads"])] = d
            prog = "torch" if b == "torch_forward" else "ckptd"
            cores.setdefault((prog, s), set()).add(d["core"])
        elif b == "phases":
            phases.append(d)
        elif b == "cat":
            cat_s.append(d["seconds"])
        elif b == "load":
            load = d
        elif b == "f16":
            f16 = d

    def get(bench, setting, key, preset, B, T, n):
        d = runs.get((bench, setting, preset, B, T, n))
        return None if d is None else d.get(key)

    out = []
    p = out.append
    p("## ckptd forward vs OpenBLAS sgemm vs PyTorch (random weights, medians)")
    p("")
    if a.best:
        p(f"Settings: **inst** = OpenBLAS as installed (OPENBLAS_CORETYPE unset); "
          f"**best** = OPENBLAS_CORETYPE={a.best} (best family for this CPU).")
    else:
        p("No OpenBLAS core better than the installed choice is known for this CPU; "
          "**best** columns repeat the installed setting.")
    for (prog, s), cs in sorted(cores.items()):
        label = "as installed" if s == inst else f"OPENBLAS_CORETYPE={s}"
        p(f"- OpenBLAS core reported by {prog}, {label}: {', '.join(sorted(cs))}")
    p("")
    p("| model | B×T | thr | ckptd tok/s inst | GFLOP/s inst | ckptd tok/s best | GFLOP/s best "
      "| sgemm GFLOP/s inst | sgemm GFLOP/s best | fwd/sgemm best | fwd/sgemm best, CPU time "
      "| torch tok/s inst | torch tok/s best | ckptd best / torch inst | ckptd best / torch best |")
    p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    keys = sorted({k[2:] for k in runs}, key=lambda k: (k[0], -k[1], k[3]))
    for preset, B, T, n in keys:
        g = lambda bench, setting, key: get(bench, setting, key, preset, B, T, n)  # noqa: E731
        ck_i, ck_b = g("forward", inst, "tokens_per_s"), g("forward", best, "tokens_per_s")
        gf_i, gf_b = g("forward", inst, "gflops"), g("forward", best, "gflops")
        sg_i, sg_b = g("sgemm", inst, "gflops"), g("sgemm", best, "gflops")
        th_i, th_b = g("torch_forward", inst, "tokens_per_s"), g("torch_forward", best, "tokens_per_s")
        fc, sc = g("forward", best, "cpu_seconds"), g("sgemm", best, "cpu_seconds")
        ff, sf = g("forward", best, "gflop"), g("sgemm", best, "gflop")
        cpu_ratio = ratio(ratio(ff, fc), ratio(sf, sc))
        p(f"| {preset} | {B}×{T} | {n} | {fmt(ck_i)} | {fmt(gf_i, 1)} | {fmt(ck_b)} | {fmt(gf_b, 1)} "
          f"| {fmt(sg_i, 1)} | {fmt(sg_b, 1)} | {fmt(ratio(gf_b, sg_b), 2)} | {fmt(cpu_ratio, 2)} "
          f"| {fmt(th_i)} | {fmt(th_b)} | {fmt(ratio(ck_b, th_i), 2)} | {fmt(ratio(ck_b, th_b), 2)} |")
    p("")
    p("GFLOP/s count 2·M·N·K per matrix product, attention as the engine computes it "
      "(causal blocks of 128 query rows); the sgemm baseline runs only the weight products "
      "(L × {qkv, attn out, MLP in, MLP out} + unembedding) as plain cblas_sgemm, OpenBLAS "
      "threaded as configured. 'fwd/sgemm' is the ratio of the two GFLOP/s (wall clock); "
      "'CPU time' the same from the processes' CPU seconds, which other work on the machine "
      "moves less (with 2 threads it counts both threads, waiting included). "
      "Goal: fwd/sgemm ≥ 0.9 on every row, and ckptd faster than torch (ratios > 1).")
    if a.note:
        p("")
        p(a.note)

    # second-thread scaling
    p("")
    p("Second thread (2-thread / 1-thread tokens/s, best core):")
    p("")
    p("| model | B×T | ckptd | sgemm | torch |")
    p("|---|---|--:|--:|--:|")
    for preset, B, T in sorted({k[:3] for k in keys}, key=lambda k: (k[0], -k[1])):
        def sc(bench, key):
            return ratio(get(bench, best, key, preset, B, T, 2), get(bench, best, key, preset, B, T, 1))
        p(f"| {preset} | {B}×{T} | {fmt(sc('forward', 'tokens_per_s'), 2)} "
          f"| {fmt(sc('sgemm', 'gflops'), 2)} | {fmt(sc('torch_forward', 'tokens_per_s'), 2)} |")

    # load, conversion, memory
    p("")
    p("## Load, conversion, memory")
    p("")
    p("| measurement | value | baseline | ratio |")
    p("|---|--:|--:|--:|")
    if load:
        cat = statistics.median(cat_s) if cat_s else None
        mb = load["bytes"] / 2**20
        p(f"| load pythia-160m F32 ({mb:,.0f} MiB), read-only (mmap) | {load['load_seconds']*1e3:,.1f} ms "
          f"| cat > /dev/null {fmt(cat and cat*1e3, 1)} ms | {fmt(ratio(load['load_seconds'], cat), 2)} |")
        p(f"| same | {load['load_seconds']*1e3:,.1f} ms | read(2) in-process "
          f"{load['read_seconds']*1e3:,.1f} ms ({load['read_gbps']:.1f} GB/s) | {load['load_over_read']:.2f} |")
        if "check_seconds" in load:
            p(f"| read-only load, its parts: map the file and touch each page | "
              f"{load['map_touch_seconds']*1e3:,.1f} ms | | |")
            p(f"| finiteness check of every weight (vectorised, one pass) | "
              f"{load['check_seconds']*1e3:,.1f} ms | as a plain isfinite loop (before) "
              f"{load['check_scalar_seconds']*1e3:,.1f} ms | "
              f"{fmt(ratio(load['check_seconds'], load['check_scalar_seconds']), 2)} |")
            if cat:
                before = load['load_seconds'] - load['check_seconds'] + load['check_scalar_seconds']
                p(f"| load read-only with the plain check (before; estimated from the parts) | "
                  f"{before*1e3:,.1f} ms | cat > /dev/null {cat*1e3:,.1f} ms | {before/cat:.2f} |")
        p(f"| load writable (weights copied) | {load['load_writable_seconds']*1e3:,.1f} ms "
          f"| read(2) into a new buffer {load['read_fresh_seconds']*1e3:,.1f} ms "
          f"| {load['load_writable_over_read_fresh']:.2f} |")
    else:
        p(f"| load | {DASH} | | |")
    if f16:
        p(f"| F16→F32 tensor_to_f32 ({f16['elements']*2/2**20:,.0f} MiB in) "
          f"| {f16['gbps_out']:.2f} GB/s written | {f16['gbps_in']:.2f} GB/s read | |")
    for preset, B, T, n in keys:
        if n != 1:
            continue
        rc = get("forward", best, "peak_rss_mib", preset, B, T, n)
        rt = get("torch_forward", best, "peak_rss_mib", preset, B, T, n)
        p(f"| peak RSS, ckptd forward {preset} {B}×{T} | {fmt(rc)} MiB "
          f"| torch {fmt(rt)} MiB | {fmt(ratio(rc, rt), 2)} |")

    # attention beside the weight products
    if phases:
        p("")
        p(f"## Attention beside the weight products ({phases[0]['core']}; GFLOP/s of each phase)")
        p("")
        p("| model | B×T | thr | attention GFLOP/s | weight products GFLOP/s | attention / weights "
          "| attention share of the forward |")
        p("|---|---|--:|--:|--:|--:|--:|")
        for d in sorted(phases, key=lambda d: (d["preset"], -d["B"], d["threads"])):
            ph = d["phases"]
            att = ph.get("attention", {})
            ws = [ph[k] for k in ("qkv", "attn_out", "mlp_in", "mlp_out") if k in ph]
            wf = sum(x["gflops"] * x["seconds"] for x in ws)
            wt = sum(x["seconds"] for x in ws)
            wg = wf / wt if wt > 0 else None
            ag = att.get("gflops")
            p(f"| {d['preset']} | {d['B']}×{d['T']} | {d['threads']} | {fmt(ag, 1)} | {fmt(wg, 1)} "
              f"| {fmt(ratio(ag, wg), 2)} | {100 * att.get('share', 0):.1f}% |")
        p("")
        p("Attention is the fused kernel (scores, causal mask, online softmax and z over blocks "
          "of keys, per (batch, head) on the model's threads); its FLOPs are the causal blocks "
          "it computes (attention_flops), the weight products' the four per-layer sgemm.")

    # phases
    if phases:
        names = list(phases[0]["phases"])
        p("")
        p(f"## Where a forward's time goes ({phases[0]['core']}; % of the forward)")
        p("")
        p("| model | B×T | thr | forward s | rebuilt s | logits Δ | " + " | ".join(names) + " |")
        p("|---|---|--:|--:|--:|--:|" + "--:|" * len(names))
        for d in phases:
            cells = []
            for k in names:
                ph = d["phases"][k]
                c = f"{100 * ph['share']:.1f}%"
                if "gflops" in ph:
                    c += f" ({ph['gflops']:.0f})"
                cells.append(c)
            p(f"| {d['preset']} | {d['B']}×{d['T']} | {d['threads']} | {d['forward_seconds']:.3f} "
              f"| {d['phased_seconds']:.3f} | {d['logits_maxdiff']:.2g} | " + " | ".join(cells) + " |")
        p("")
        p("Phases are the forward rebuilt from kernels.h with a clock around each step; "
          "(n) is that step's GFLOP/s. 'forward s' is the engine's own forward and 'rebuilt s' the "
          "sum of the steps, timed in the same process; 'logits Δ' is the largest difference between "
          "their logits (0: the rebuilt forward computes exactly what the engine does).")

    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
