#!/usr/bin/python3
"""transitions_realbench.py - a labelled benchmark of real training series
for the transition detector (daemon/detect/transitions.h), and its table.

    bench/transitions_realbench.py gen  [--coretypes Haswell,SkylakeX,Sandybridge]
                                        [--kinds K,...] [--jobs 2] [--data DIR] [--work DIR]
                                        [--seeds 1,2] [--regen] [--reuse]
    bench/transitions_realbench.py eval [--data DIR] [--subset] [--json FILE]
    bench/transitions_realbench.py show --kinds KIND,... [--metrics M,...] [--data DIR]

`gen` trains the runs below with `ckpt-worker train` under each OpenBLAS
kernel family (OPENBLAS_CORETYPE), evaluating the task's metrics densely
(`--eval-every`), and stores per run, in DATA (default bench/data/
transitions, one gzipped JSON file per run): the settings, the dense
training log, the checkpoint series of the task's metrics (the dense log's
values at the run's checkpoints: the same numbers `train_log.jsonl` and the
`task` battery item give), and for some runs mechanistic series from
`ckpt-worker analyze` at every checkpoint (`task`: Fourier key fraction,
restricted and excluded loss, weight norm; `heads`: induction scores).  It
needs build/bin/ckpt-worker and takes about an hour of CPU for three kernel
families; `make bench` only reads the stored files.

`eval` labels every series from its dense log (definitions below, never
from a detector), runs both detectors on the checkpoint series
(build/bench/transitions_series: level-v2 and the former ramp-v1) and
prints the precision/recall table per kind of series (and per kernel
family where they differ).  `--subset` uses one seed of each kind and
kernel family and is what tests/transitions_real.sh asserts on.  `show`
prints the labelled series of some kinds (or runs) one by one: their
checkpoint values, labels and each detector's events with p-values.

KINDS (each run is one of them; seeds and sizes in RUNS):

  grok-spiky   modular addition, the trainer's default (p 47, 40% train,
               1 layer, d_model 64, lr 2e-3, wd 2): memorisation by step
               ~100, grokking at ~700-1300 with one-checkpoint loss spikes
               (the "slingshot") before and after
  grok-lit     the setting of Nanda et al. 2023: lr 1e-3, wd 1, betas
               0.9/0.98, 30% train, d_model 128, d_mlp 512, p 59; trained for
               8000 steps (grokking between ~3000 and ~6200 by kernel
               family, after a wandering test loss), checkpoints every 200
  grok-torch   the grok-lit setting trained by PyTorch outside ckptd
               (bench/torch_grok.py: the same architecture, written from the
               setting's description, its own init and split; 8000 steps,
               checkpoints 0, 1, 2, 4 .. 512 then every 200); besides the
               trainer's metrics, ckptd's own measurement of it: `ckpt-worker
               analyze --items loss` with the test pairs as eval tokens (`a b
               = c`), whose loss_by_pos idx 2 is the answer-position loss,
               labelled with test_loss's labels (the same quantity).  Not in
               `eval --subset`.  Stored under Haswell and Cooperlake (the
               native family of the machine it was made on; torch's
               OpenBLAS follows OPENBLAS_CORETYPE too): gen --kinds
               grok-torch --coretypes Haswell,Cooperlake, 16-40 minutes
               of one core each
  induction    the induction task's default (2 layers, 1000 steps): the
               in-context loss falls when induction heads form (~400)
  lr-schedule  induction with a 100-step warm-up and the rate decayed
               linearly to 10% over steps 800-850: a kink at the warm-up's
               end and a loss drop at the decay
  spike        induction with the rate multiplied by 30 for one step (700):
               a loss spike that recovers
  noise-only   windows from the converged tails: grok-spiky's steps
               1500-2950 every 50 (30 checkpoints) and four windows of 50
               checkpoints, every 10 steps, of the induction runs' steps
               1000-3000 (trained to 3000): nothing changes but noise, slow
               drift and spikes
  constant     runs whose rate is 1e-9: every metric constant to float32
               precision

GROUND TRUTH, from the dense log (every 5 steps; 20 for grok-lit).  y~ is
the running median of 5 consecutive dense evaluations (a spike of one or
two evaluations cannot move it); level(a, b) the median of y~ over dense
steps in [a, b]; cross(level, dir, after) the first dense step after
`after` where y~ is past `level` in direction dir and stays past it for
the next 2 checkpoint intervals; K the run's even checkpoint spacing.

  memorisation (modular addition): Tm = cross(train_acc, 0.99, up, 0).
      train_acc rises and train_loss falls from their values at step 0 to
      level(Tm, Tm + 2K).
  grokking (modular addition): Tg = cross(test_acc, 0.5, up, Tm).  The
      plateau P = [Tm + K, Tm + K + (Tg - Tm) / 3]; the end E = the last
      10% of the run.  test_acc rises and test_loss falls from level(P)
      to level(E).
  grokking stages (grok-lit, test_loss): stage 1 falls from the maximum
      of y~ over P..Tg to level(S), S = [T1 + K, T1 + 3K] where T1 is
      where it fell half of (max - level(P..)) ... see stages() below.
  induction: Ti = cross(icl_loss, mid, down, 16) with mid half-way from
      the plateau (the maximum of y~ after step 16) to level(E): icl_loss
      falls from that maximum to level(E); icl_acc rises from level over
      [16, Ti / 2] to level(E); loss (every position) falls from its
      level at [Ti - 2K, Ti - K] to level(Ti + 2K, Ti + 4K).
  lr decay (lr-schedule): loss, icl_loss, acc and icl_acc move from
      level(D - 3K, D) to level(D + 150, D + 150 + 3K), D the decay's start,
      when they move the expected way and no other labelled change of the
      metric is under way in [D - 3K, D].

  Every labelled transition has a truth step t* = cross(mid, dir, start of
  its window), mid half-way between its two levels; its size |after -
  before|; and the scatter of its series: 1.4826 MAD of the checkpoint
  series' differences between consecutive checkpoints before the window
  (at least 4 differences, else the whole series').  The goals count the
  labelled transitions whose size is at least 5x that scatter.

  spikes: a checkpoint of the evenly spaced part whose value is farther
      from y~ at its step than 5 scatters, 5 quanta (the smallest nonzero
      difference between checkpoints: 1/N for an accuracy over N
      examples) and 2% of y~'s range, where y~ at the checkpoints either
      side differs by at most a quarter of that (the curve came back).

SCORING.  A detected transition matches a labelled one of its series when
they have the same sign and t* lies within [start - 1 checkpoint, end + 1
checkpoint]; each label takes at most one detection (the nearest peak).
Peak accuracy: the detection's peak is within 1 checkpoint of t* (in the
checkpoint index, t* interpolated between the checkpoints around it).  An
unmatched detection is confirmed when y~ moved, between the checkpoints
before its start and after its end, by at least half its magnitude in its
direction and by at least 2 scatters: a real change nobody labelled; else
it is false.  Every detection in a noise-only or constant series is false.
A spike counts as reported as a spike when a spike event has its peak
there, and as a transition when a false transition's window holds it.
"""
import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
WORKER = os.path.join(ROOT, "build", "bin", "ckpt-worker")
SERIES = os.path.join(ROOT, "build", "bench", "transitions_series")
DATA = os.path.join(ROOT, "bench", "data", "transitions")
TORCH_GROK = os.path.join(ROOT, "bench", "torch_grok.py")
# the answer-position loss of `ckpt-worker analyze --items loss` on `a b = c`
# eval tokens: loss_by_pos idx 2
ANSWER_LOSS = "loss/loss_by_pos/-1/-1/2"
# kinds left out of `eval --subset` (tests/transitions_real.sh)
NOT_IN_SUBSET = {"grok-torch"}
CORETYPES = ["Haswell", "SkylakeX", "Sandybridge"]

# ---- the runs ----

MODADD = ["--task", "modular-addition"]
INDUCTION = ["--task", "induction"]
LIT = MODADD + ["--p", "59", "--train-frac", "0.3", "--d-model", "128", "--d-mlp", "512", "--lr", "1e-3",
                "--wd", "1", "--beta1", "0.9", "--beta2", "0.98", "--steps", "8000", "--ckpt-every", "200"]

# kind, name, training arguments, dense eval spacing, analyze items, seeds
RUNS = [
    ("grok-spiky", "grok", MODADD + ["--steps", "3000"], 5, "task", [1, 2, 3]),
    ("grok-lit", "lit", LIT, 20, "task", [1]),
    ("induction", "ind", INDUCTION + ["--steps", "3000", "--checkpoints", None], 5, "heads", [1, 2, 3]),
    ("lr-schedule", "sched", INDUCTION + ["--steps", "1200", "--warmup", "100", "--decay-start", "800",
                                          "--decay-steps", "50", "--decay-to", "0.1"], 5, "", [1, 2]),
    ("spike", "spike", INDUCTION + ["--steps", "1000", "--lr-spike", "715:30"], 5, "", [1, 2]),
    ("grok-torch", "torch", ["--p", "59", "--train-frac", "0.3", "--steps", "8000"], 20, "loss", [1]),
    ("constant", "frozen-ma", MODADD + ["--steps", "400", "--lr", "1e-9", "--ckpt-every", "10"], 10, "", [1]),
    ("constant", "frozen-ind", INDUCTION + ["--steps", "400", "--lr", "1e-9", "--ckpt-every", "10"], 10, "",
     [1]),
]


def induction_checkpoints():
    """The default 1000-step schedule (the run goes on to 3000 steps for the
    tails, which come from the dense log)."""
    s = [0, 1, 2, 4, 8, 16] + list(range(20, 1001, 20))
    return ",".join(str(x) for x in s)


def finished(out):
    """a training in `out` that reached its last checkpoint (--reuse)"""
    try:
        with open(os.path.join(out, "train_log.jsonl")) as f:
            last = [json.loads(l) for l in f][-1]["step"]
        return os.path.exists(os.path.join(out, "step%d" % last, "model.safetensors"))
    except (OSError, IndexError, ValueError, KeyError):
        return False


def run_one(kind, name, args, every, items, seed, core, work, data, regen, reuse=False):
    rid = "%s-s%d-%s" % (name, seed, core)
    out = os.path.join(work, rid)
    dest = os.path.join(data, rid + ".json.gz")
    args = [induction_checkpoints() if a is None else a for a in args]
    if os.path.exists(dest) and not regen:
        return rid + " (kept)"
    t0 = time.monotonic()
    env = dict(os.environ, OPENBLAS_CORETYPE=core, CKPTD_BLAS_AUTO="0")
    trained = reuse and finished(out)
    if not trained:
        shutil.rmtree(out, ignore_errors=True)
    if trained:
        pass
    elif name == "torch":
        # trained by PyTorch outside ckptd (bench/torch_grok.py); ckptd
        # only analyses its checkpoints, with the test pairs as eval tokens
        cmd = ["/usr/bin/python3", TORCH_GROK, "--out", out, "--seed", str(seed), "--every", str(every)] + args
    else:
        cmd = [WORKER, "--threads", "1", "train"] + args + ["--seed", str(seed), "--out", out,
                                                            "--eval-every", str(every), "--log-every", "0"]
    if not trained:
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dense = [json.loads(l) for l in open(os.path.join(out, "eval_log.jsonl"))]
    ckpt = [json.loads(l) for l in open(os.path.join(out, "train_log.jsonl"))]
    metrics = [k for k in ckpt[0] if k != "step"]
    doc = {"run": rid, "kind": kind, "seed": seed, "coretype": core, "args": args,
           "dense": {"steps": [r["step"] for r in dense],
                     **{m: [float("%.6g" % r[m]) for r in dense] for m in metrics}},
           "series": []}
    steps = [r["step"] for r in ckpt]
    for m in metrics:
        doc["series"].append({"metric": m, "source": "dense", "steps": steps, "values": [r[m] for r in ckpt]})
    if items:
        rows = {}
        for st in steps:
            ev = ["--eval-tokens", os.path.join(out, "test_tokens.json")] if name == "torch" else []
            r = subprocess.run([WORKER, "--threads", "1", "analyze", os.path.join(out, "step%d" % st),
                                "--items", items] + ev, env=env, check=True, capture_output=True, text=True)
            for line in r.stdout.splitlines():
                item, ver, metric, layer, head, idx, value = line.split("\t")
                if items == "loss" and not (metric == "loss_by_pos" and idx == "2"):
                    continue
                if items == "task" and metric not in ("fourier_key_fraction", "restricted_loss",
                                                      "excluded_loss", "weight_norm", "answer_loss"):
                    continue
                if items == "heads" and metric != "induction_score":
                    continue
                key = "%s/%s/%s/%s/%s" % (item, metric, layer, head, idx)
                rows.setdefault(key, {})[st] = float(value)
        for key in sorted(rows):
            pts = rows[key]
            ser = {"metric": key, "source": "analyze", "steps": [s for s in steps if s in pts],
                   "values": [pts[s] for s in steps if s in pts]}
            if key == ANSWER_LOSS:
                ser["truth"] = "test_loss"  # the same quantity, measured by ckptd
            doc["series"].append(ser)
    tmp = dest + ".tmp"
    with gzip.open(tmp, "wt") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, dest)
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    return "%s (%.0f s)" % (rid, time.monotonic() - t0)


def gen(a):
    os.makedirs(a.data, exist_ok=True)
    work = a.work or tempfile.mkdtemp(prefix="ckptd-realbench-")
    kinds = set(a.kinds.split(",")) if a.kinds else None
    want_seeds = {int(x) for x in a.seeds.split(",")} if a.seeds else None
    todo = []
    for core in a.coretypes.split(","):
        for kind, name, args, every, items, seeds in RUNS:
            if kinds and kind not in kinds and name not in kinds:
                continue
            for seed in seeds:
                if want_seeds and seed not in want_seeds:
                    continue
                todo.append((kind, name, args, every, items, seed, core, work, a.data, a.regen, a.reuse))
    # the long runs first, so two workers finish together
    todo.sort(key=lambda t: t[1] not in ("lit", "torch"))
    with ThreadPoolExecutor(max_workers=a.jobs) as ex:
        for rid in ex.map(lambda t: run_one(*t), todo):
            print("wrote", rid, flush=True)

# ---- ground truth ----

def load(data, subset=False):
    runs = []
    for f in sorted(os.listdir(data)):
        if f.endswith(".json.gz"):
            with gzip.open(os.path.join(data, f), "rt") as fh:
                d = json.load(fh)
            if subset and (d["seed"] != 1 or d["kind"] in NOT_IN_SUBSET):
                continue
            runs.append(d)
    return runs


def median(xs):
    a = sorted(xs)
    n = len(a)
    return a[n // 2] if n % 2 else (a[n // 2 - 1] + a[n // 2]) / 2


def mad_scale(xs):
    if not xs:
        return 0.0
    c = median(xs)
    return 1.4826 * median([abs(x - c) for x in xs])


class Dense:
    """A run's dense log: y~ per metric, levels and crossings."""

    def __init__(self, run):
        self.steps = st = run["dense"]["steps"]
        ck = run["series"][0]["steps"]
        # the evaluations within half the checkpoint interval around each
        # (the log-spaced start: hardly more than itself)
        win = []
        j = 0
        for i, t in enumerate(st):
            while j + 1 < len(ck) - 1 and ck[j + 1] <= t:
                j += 1
            h = (ck[j + 1] - ck[j]) / 2 if j + 1 < len(ck) else (ck[-1] - ck[-2]) / 2
            lo, hi = i, i
            while lo > 0 and st[lo - 1] >= t - h:
                lo -= 1
            while hi + 1 < len(st) and st[hi + 1] <= t + h:
                hi += 1
            win.append((lo, hi + 1))
        self.sm = {}
        for m, ys in run["dense"].items():
            if m == "steps":
                continue
            self.sm[m] = [median(ys[a:b]) for a, b in win]

    def at(self, m, step):
        """y~ at the dense step nearest to step"""
        i = min(range(len(self.steps)), key=lambda k: abs(self.steps[k] - step))
        return self.sm[m][i]

    def level(self, m, a, b):
        vs = [y for s, y in zip(self.steps, self.sm[m]) if a <= s <= b]
        return median(vs) if vs else self.at(m, (a + b) / 2)

    def cross(self, m, level, up, after, hold):
        """first dense step > after where y~ is past level and stays so for `hold` steps"""
        st, y = self.steps, self.sm[m]
        for i, s in enumerate(st):
            if s <= after:
                continue
            past = (lambda v: v > level) if up else (lambda v: v < level)
            if past(y[i]) and all(past(y[j]) for j in range(i, len(st)) if st[j] <= s + hold):
                return s
        return None


def even_spacing(steps):
    d = [b - a for a, b in zip(steps, steps[1:])]
    return max(set(d[len(d) // 2:]), key=d[len(d) // 2:].count)


def stages(dn, m, ck, up, total, t_from, t_to):
    """Stages of a change of size total (> 0) in direction up, on the
    checkpoints ck within [t_from, t_to]: maximal runs of consecutive
    checkpoint intervals over each of which y~ moves by >= 10% of total in
    the direction; two runs are separate stages only when >= 2 intervals,
    each moving < 5% of total, lie between them (a level held for 3
    checkpoints), else one.  Returns [(c_a, c_b)]."""
    cs = [c for c in ck if t_from <= c <= t_to]
    sg = 1 if up else -1
    mv = [sg * (dn.at(m, b) - dn.at(m, a)) for a, b in zip(cs, cs[1:])]
    runs = []
    i = 0
    while i < len(mv):
        if mv[i] >= 0.1 * total:
            j = i
            while j + 1 < len(mv) and mv[j + 1] >= 0.1 * total:
                j += 1
            runs.append([i, j])
            i = j + 1
        else:
            i += 1
    merged = []
    for r in runs:
        if merged:
            gap = range(merged[-1][1] + 1, r[0])
            flat = sum(1 for k in gap if abs(mv[k]) < 0.05 * total)
            if not (len(gap) >= 2 and flat == len(gap)):
                merged[-1][1] = r[1]
                continue
        merged.append(r)
    return [(cs[a], cs[b + 1]) for a, b in merged]


def label(dn, m, ck, up, a, b, name, pre=None, post=None):
    """A labelled transition between checkpoints a and b (or given levels)."""
    before = dn.at(m, a) if pre is None else pre
    after = dn.at(m, b) if post is None else post
    mid = (before + after) / 2
    hold = 2 * even_spacing(ck)
    t = dn.cross(m, mid, up, a - 1, 0)
    if t is None or t > b + hold:
        return None
    return {"name": name, "metric": m, "up": up, "before": before, "after": after, "t": t, "a": a, "b": b}


def truth(run):
    """The labelled transitions of a run's dense-logged metrics."""
    dn = Dense(run)
    ck = run["series"][0]["steps"]
    K = even_spacing(ck)
    end = dn.steps[-1]
    E = (end - (end - dn.steps[0]) // 10, end)
    out = []
    kind = run["kind"]

    def staged(m, up, total, t_from, t_to, name):
        st = stages(dn, m, ck, up, total, t_from, t_to)
        for k, (a, b) in enumerate(st):
            lb = label(dn, m, ck, up, a, b, name + (" stage %d" % (k + 1) if len(st) > 1 else ""))
            if lb:
                out.append(lb)

    if kind in ("grok-spiky", "grok-lit", "grok-torch"):
        Tm = dn.cross("train_acc", 0.99, True, 0, 2 * K)
        if Tm is not None:
            staged("train_acc", True, dn.level("train_acc", Tm, Tm + 2 * K) - dn.at("train_acc", 0), 0, Tm + K,
                   "memorisation")
            staged("train_loss", False, dn.at("train_loss", 0) - dn.level("train_loss", Tm, Tm + 2 * K), 0,
                   Tm + K, "memorisation")
            Tg = dn.cross("test_acc", 0.5, True, Tm, 2 * K)
            if Tg is not None:
                P = (Tm + K, Tm + K + (Tg - Tm) // 3)
                acc_total = dn.level("test_acc", *E) - dn.level("test_acc", *P)
                staged("test_acc", True, acc_total, Tm + K, end, "grokking")
                top = max(y for s, y in zip(dn.steps, dn.sm["test_loss"]) if P[0] <= s <= Tg)
                staged("test_loss", False, top - dn.level("test_loss", *E), Tm + K, end, "grokking")
    if kind in ("induction", "lr-schedule", "spike"):
        lim = 1000 if kind == "induction" else end
        Ep = (lim - lim // 10, lim)
        top = max(y for s, y in zip(dn.steps, dn.sm["icl_loss"]) if 16 <= s <= lim)
        staged("icl_loss", False, top - dn.level("icl_loss", *Ep), 16, lim, "induction")
        staged("icl_acc", True, dn.level("icl_acc", *Ep) - dn.level("icl_acc", 16, 60), 16, lim, "induction")
        staged("loss", False, dn.level("loss", 16, 60) - dn.level("loss", *Ep), 16, lim, "induction")
        staged("acc", True, dn.level("acc", *Ep) - dn.level("acc", 16, 60), 16, lim, "induction")
    if kind == "lr-schedule":
        args = run["args"]
        D = int(args[args.index("--decay-start") + 1])
        for m, up in (("loss", False), ("icl_loss", False), ("acc", True), ("icl_acc", True)):
            pre, post = dn.level(m, D - 3 * K, D), dn.level(m, D + 150, D + 150 + 3 * K)
            # only where the level before the decay is the metric's own (no
            # other labelled change still under way)
            busy = any(lb["metric"] == m and lb["a"] <= D and D - 3 * K <= lb["b"] for lb in out)
            if (post - pre > 0) == up and not busy:
                lb = label(dn, m, ck, up, D, D + 150 + K, "lr decay", pre, post)
                if lb:
                    out.append(lb)
    return dn, out


def scatter_before(steps, values, t):
    """1.4826 MAD of consecutive differences of the checkpoints before t"""
    pts = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
    d = [b[1] - a[1] for a, b in zip(pts, pts[1:]) if b[0] < t]
    if len(d) < 4:
        d = [b[1] - a[1] for a, b in zip(pts, pts[1:])]
    return mad_scale(d)


def quantum(values):
    """the smallest nonzero difference between consecutive values"""
    d = [abs(b - a) for a, b in zip(values, values[1:]) if b != a]
    return min(d) if d else 0.0


def spike_labels(dn, m, steps, values, scat):
    """checkpoints of the evenly spaced part whose value leaves y~ by more
    than 5 scatters, 5 quanta and 2% of y~'s range, where y~ at the
    checkpoints either side differs by at most a quarter of that excursion
    (the curve came back)"""
    ys = [dn.at(m, x) for x in steps]
    rng = max(ys) - min(ys)
    scat = max(scat, quantum(values))
    out = []
    for i in range(1, len(steps) - 1):
        if steps[i] - steps[i - 1] != steps[i + 1] - steps[i]:
            continue
        ex = abs(values[i] - ys[i])
        if ex > 5 * scat and ex > 0.02 * rng and abs(ys[i - 1] - ys[i + 1]) <= 0.25 * ex:
            out.append(steps[i])
    return out


# ---- the series the detectors see ----

def bench_series(runs):
    """[(id, run, series dict, role)]: role "labelled" (dense-logged metrics
    of runs with events), "noise" (windows of converged tails), "constant",
    "mech" (analyze series: corroboration only)."""
    out = []
    for run in runs:
        kind = run["kind"]
        dn = Dense(run)
        for s in run["series"]:
            sid = "%s/%s" % (run["run"], s["metric"])
            if s["source"] == "analyze" and "truth" in s:
                # a measurement of a dense-logged metric: labelled by its truth
                out.append((sid, run, s, "labelled"))
                continue
            if s["source"] == "analyze":
                if kind == "induction":
                    s = dict(s, steps=[x for x in s["steps"] if x <= 1000],
                             values=[v for x, v in zip(s["steps"], s["values"]) if x <= 1000])
                if kind != "noise-only":
                    out.append((sid, run, s, "mech"))
                continue
            if kind == "constant":
                out.append((sid, run, s, "constant"))
                continue
            if kind == "induction":
                keep = [i for i, x in enumerate(s["steps"]) if x <= 1000]
                out.append((sid, run, dict(s, steps=[s["steps"][i] for i in keep],
                                           values=[s["values"][i] for i in keep]), "labelled"))
            else:
                out.append((sid, run, s, "labelled"))
            # converged tails: windows of checkpoints from the dense log
            if kind == "grok-spiky":
                grid, size = list(range(1500, 3000, 50)), 30
            elif kind == "induction":
                grid, size = list(range(1000, 3000, 10)), 50
            else:
                continue
            m = s["metric"]
            ys = dict(zip(dn.steps, run["dense"][m]))
            for w in range(len(grid) // size):
                st = [x for x in grid[w * size:(w + 1) * size] if x in ys]
                out.append(("%s/tail%d" % (sid, w), run, {"metric": m, "source": "dense", "steps": st,
                                                          "values": [ys[x] for x in st]}, "noise"))
    return out


def certify_noise(dn, m, steps, values):
    """max over checkpoint pairs at most n/3 apart of |y~ change| / scatter
    (the scatter at least 1% of the window's range of values)"""
    scat = scatter_before(steps, values, steps[-1] + 1)
    ys = [dn.at(m, x) for x in steps]
    scat = max(scat, 0.01 * (max(ys) - min(ys)))
    w = max(1, len(steps) // 3)
    big = 0.0
    for i in range(len(ys)):
        for j in range(i + 1, min(len(ys), i + w + 1)):
            big = max(big, abs(ys[j] - ys[i]))
    return big / scat if scat > 0 else (0.0 if big == 0 else math.inf)


def detect(items, p_max=None):
    """run transitions_series on the series; {(id, method): result}"""
    doc = {"series": [{"id": sid, "steps": s["steps"],
                       "values": [v if v is not None and math.isfinite(v) else None for v in s["values"]]}
                      for sid, _, s, _ in items]}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
        path = f.name
    try:
        cmd = [SERIES, path, "--method", "both"] + (["--p-max", repr(p_max)] if p_max else [])
        r = subprocess.run(cmd, check=True, capture_output=True, text=True)
    finally:
        os.unlink(path)
    out = {}
    for line in r.stdout.splitlines():
        d = json.loads(line)
        out[(d["id"], d["method"])] = d
    return out


def index_of(steps, t):
    """t as a fractional checkpoint index"""
    for i in range(len(steps) - 1):
        if steps[i] <= t <= steps[i + 1]:
            return i + (t - steps[i]) / (steps[i + 1] - steps[i])
    return 0.0 if t < steps[0] else len(steps) - 1.0


def score_series(steps, values, labels, events, dn, m, role):
    """match events to labels: per label (found, peak_ok), per event its class"""
    idx = {x: i for i, x in enumerate(steps)}
    trs = [e for e in events if e["kind"] == "transition"]
    taken = set()
    res = []
    for lb in labels:
        best, bd = None, None
        for k, e in enumerate(trs):
            if k in taken or (e["magnitude"] > 0) != lb["up"]:
                continue
            lo = steps[max(0, idx[e["start_step"]] - 1)]
            hi = steps[min(len(steps) - 1, idx[e["end_step"]] + 1)]
            if not (lo <= lb["t"] <= hi):
                continue
            d = abs(idx[e["peak_step"]] - index_of(steps, lb["t"]))
            if bd is None or d < bd:
                best, bd = k, d
        if best is not None:
            taken.add(best)
        res.append((lb, best is not None, bd is not None and bd <= 1.0))
    classes = []
    scat = scatter_before(steps, values, steps[-1] + 1)
    for k, e in enumerate(trs):
        if k in taken:
            classes.append(("matched", e))
            continue
        if role in ("noise", "constant"):
            classes.append(("false", e))
            continue
        i0, i1 = max(0, idx[e["start_step"]] - 1), min(len(steps) - 1, idx[e["end_step"]] + 1)
        moved = dn.at(m, steps[i1]) - dn.at(m, steps[i0])
        ok = moved * e["magnitude"] > 0 and abs(moved) >= 0.5 * abs(e["magnitude"]) and abs(moved) >= 2 * scat
        classes.append(("confirmed" if ok else "false", e))
    return res, classes


P_WEAK = 0.01
METHODS = ("level-v2", "level-v2+groups", "ramp-v1")


def best_window(steps, lb, events):
    """For a missed label: the smallest p-value of a transition that would
    have matched it (same sign, t* inside its window give or take a
    checkpoint) among every candidate the detector tests (p_max 1), and its
    peak's distance from t* in checkpoints."""
    idx = {x: i for i, x in enumerate(steps)}
    ti = index_of(steps, lb["t"])
    best = None
    for e in events:
        if e["kind"] != "transition" or (e["magnitude"] > 0) != lb["up"]:
            continue
        if idx[e["start_step"]] - 1 <= ti <= idx[e["end_step"]] + 1 and (best is None or e["p_value"] < best["p_value"]):
            best = e
    if best is None:
        return "no candidate window covers it"
    return "best covering candidate p %.2g, peak %+.1f checkpoints from t*" % (
        best["p_value"], idx[best["peak_step"]] - ti)


def overlap(a, b):
    return a["start_step"] < b["end_step"] and b["start_step"] < a["end_step"]


def group_evidence(items, det, weak):
    """The variant "level-v2+groups": a transition of p-value up to P_WEAK
    (level-v2 run with that rate) that overlaps no level-v2 transition of
    its series is added when its window overlaps a level-v2 transition
    (p <= TR_P_MAX) of another metric of the same run (of the same tail
    window, for noise-only series): the rule group evidence would follow
    if it lowered the per-series threshold."""
    groups = {}
    for sid, run, s, role in items:
        key = (run["run"], sid.rsplit("/", 1)[-1] if role == "noise" else "")
        groups.setdefault(key, []).append((sid, s["metric"]))
    for key, members in groups.items():
        for sid, m in members:
            strong = [e for e in det[(sid, "level-v2")]["events"] if e["kind"] == "transition"]
            cand = [e for e in weak[(sid, "level-v2")]["events"]
                    if e["kind"] == "transition" and e["p_value"] > 1e-3 and not any(overlap(e, t) for t in strong)]
            anchors = [t for sid2, m2 in members if m2 != m
                       for t in det[(sid2, "level-v2")]["events"] if t["kind"] == "transition"]
            add = [e for e in cand if any(overlap(e, t) for t in anchors)]
            d = dict(det[(sid, "level-v2")])
            d["events"] = sorted(d["events"] + add, key=lambda e: e["peak_step"])
            d["promoted"] = len(add)
            det[(sid, "level-v2+groups")] = d


def evaluate(a):
    runs = load(a.data, a.subset)
    if not runs:
        print("transitions_realbench: no benchmark data in %s (run: %s gen)" % (a.data, sys.argv[0]),
              file=sys.stderr)
        return 1
    if not os.access(SERIES, os.X_OK):
        print("transitions_realbench: %s is missing (make bench)" % SERIES, file=sys.stderr)
        return 1
    items = bench_series(runs)
    dens = {run["run"]: Dense(run) for run in runs}
    lab = {run["run"]: truth(run)[1] for run in runs}
    det = detect(items)
    group_evidence(items, det, detect(items, P_WEAK))
    anyp = detect(items, 1.0)  # every candidate: what a missed label would have needed
    # per (kind, coretype, method) tallies
    T = {}

    def tally(key):
        return T.setdefault(key, {"labels": 0, "goal": 0, "found": 0, "peak": 0, "small": 0, "small_found": 0,
                                  "series": 0, "detections": 0, "matched": 0, "confirmed": 0, "false": 0,
                                  "false_series": 0, "spikes": 0, "spike_as_spike": 0, "spike_as_tr": 0,
                                  "mech_series": 0, "mech_detections": 0, "excluded": 0, "misses": []})
    records = []
    for sid, run, s, role in items:
        dn = dens[run["run"]]
        m = s.get("truth", s["metric"])
        kind = "noise-only" if role == "noise" else run["kind"]
        steps, values = s["steps"], s["values"]
        if role == "noise" and certify_noise(dn, m, steps, values) >= 5:
            for method in METHODS:
                tally((kind, run["coretype"], method))["excluded"] += 1
            continue
        labels = [lb for lb in lab[run["run"]] if lb["metric"] == m and steps[0] <= lb["t"] <= steps[-1]] \
            if role == "labelled" else []
        for method in METHODS:
            d = det[(sid, method)]
            t = tally((kind, run["coretype"], method))
            if role == "mech":
                t["mech_series"] += 1
                t["mech_detections"] += sum(1 for e in d["events"] if e["kind"] == "transition")
                continue
            t["series"] += 1
            res, classes = score_series(steps, values, labels, d["events"], dn, m, role)
            for lb, found, peak in res:
                scat = scatter_before(steps, values, lb["a"])
                size = abs(lb["after"] - lb["before"])
                ratio = size / scat if scat > 0 else math.inf
                t["labels"] += 1
                if ratio >= 5:
                    t["goal"] += 1
                    t["found"] += found
                    t["peak"] += peak
                    if not found:
                        t["misses"].append("%s %s t*=%d (%.3g -> %.3g, %.1fx scatter; %s)" % (
                            sid, lb["name"], lb["t"], lb["before"], lb["after"], ratio,
                            best_window(steps, lb, anyp[(sid, "level-v2")]["events"])))
                else:
                    t["small"] += 1
                    t["small_found"] += found
                records.append({"id": sid, "method": method, "label": lb["name"], "t": lb["t"],
                                "ratio": ratio, "found": found, "peak_ok": peak})
            nf = 0
            for c, e in classes:
                t["detections"] += 1
                t[c] += 1
                nf += c == "false"
            t["false_series"] += nf > 0
            if role in ("labelled", "noise"):
                scat = scatter_before(steps, values, steps[-1] + 1)
                for sp in spike_labels(dn, m, steps, values, scat):
                    t["spikes"] += 1
                    t["spike_as_spike"] += any(e["kind"] == "spike" and e["start_step"] <= sp <= e["end_step"]
                                               for e in d["events"])
                    t["spike_as_tr"] += any(c == "false" and e["start_step"] <= sp <= e["end_step"]
                                            for c, e in classes)
    print_table(T)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"tallies": {"|".join(k): v for k, v in T.items()}, "labels": records}, f, indent=1)
    return 0


def show(a):
    """The labelled series of the runs of some kinds, one by one: the
    checkpoint values, the labels and what each detector reports."""
    kinds = set(a.kinds.split(","))
    runs = [r for r in load(a.data) if r["kind"] in kinds or r["run"] in kinds]
    if not runs:
        print("transitions_realbench: no run of %s in %s" % (a.kinds, a.data), file=sys.stderr)
        return 1
    items = [it for it in bench_series(runs) if it[3] == "labelled"]
    if a.metrics:
        items = [it for it in items if it[2]["metric"] in a.metrics.split(",")]
    det = detect(items)
    for sid, run, s, role in items:
        m = s.get("truth", s["metric"])
        steps, values = s["steps"], s["values"]
        print("\n## %s%s" % (sid, " (labelled as %s)" % m if m != s["metric"] else ""))
        print("values: " + " ".join("%d:%.3g" % (x, v) for x, v in zip(steps, values)))
        for lb in truth(run)[1]:
            if lb["metric"] != m:
                continue
            scat = scatter_before(steps, values, lb["a"])
            size = abs(lb["after"] - lb["before"])
            print("label %s: t* %d, %.3g -> %.3g over checkpoints %d..%d, %.1fx scatter" % (
                lb["name"], lb["t"], lb["before"], lb["after"], lb["a"], lb["b"],
                size / scat if scat > 0 else math.inf))
        for method in ("level-v2", "ramp-v1"):
            d = det[(sid, method)]
            ev = ["%s %d..%d peak %d, %s, score %.3g, p %s" % (
                e["kind"], e["start_step"], e["end_step"], e["peak_step"],
                "%.3g -> %.3g" % (e["before"], e["after"]) if "before" in e else "change %+.3g" % e["magnitude"],
                e["score"], "-" if e.get("p_value") is None else "%.2g" % e["p_value"]) for e in d["events"]]
            print("%s (max score %.3g): %s" % (method, d["max_score"], "; ".join(ev) if ev else "nothing"))
    return 0


def merge(T, pred):
    out = None
    for k, v in T.items():
        if pred(k):
            if out is None:
                out = {x: (list(y) if isinstance(y, list) else y) for x, y in v.items()}
            else:
                for x, y in v.items():
                    out[x] = out[x] + y
    return out


def pct(a, b):
    return "%.2f (%d/%d)" % (a / b, a, b) if b else "-"


def print_table(T):
    kinds = sorted({k[0] for k in T}, key=lambda k: [x[0] for x in RUNS].index(k)
                   if k in [x[0] for x in RUNS] else 99)
    cores = sorted({k[1] for k in T})
    for method in METHODS:
        print("\n### %s on real training series (bench/transitions_realbench.py)\n" % method)
        print("| kind | series | labelled (>= 5x scatter) | recall | peak within 1 ckpt | smaller ones found "
              "| detections: matched / other real / false | false per 100 series | spikes as spikes "
              "| spikes inside a false transition | analyze series: transitions |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        allt = None
        for kind in kinds:
            t = merge(T, lambda k: k[0] == kind and k[2] == method)
            if t is None:
                continue
            print("| %s | %d | %d (%d) | %s | %s | %s | %d / %d / %d | %.1f | %s | %d | %s |" % (
                kind, t["series"], t["labels"], t["goal"], pct(t["found"], t["goal"]), pct(t["peak"], t["found"]),
                pct(t["small_found"], t["small"]), t["matched"], t["confirmed"], t["false"],
                100.0 * t["false"] / t["series"] if t["series"] else 0, pct(t["spike_as_spike"], t["spikes"]),
                t["spike_as_tr"], "%d: %d" % (t["mech_series"], t["mech_detections"]) if t["mech_series"] else "-"))
        t = merge(T, lambda k: k[2] == method)
        print("| all | %d | %d (%d) | %s | %s | %s | %d / %d / %d | %.1f | %s | %d | %d: %d |" % (
            t["series"], t["labels"], t["goal"], pct(t["found"], t["goal"]), pct(t["peak"], t["found"]),
            pct(t["small_found"], t["small"]), t["matched"], t["confirmed"], t["false"],
            100.0 * t["false"] / t["series"] if t["series"] else 0, pct(t["spike_as_spike"], t["spikes"]),
            t["spike_as_tr"], t["mech_series"], t["mech_detections"]))
        print("\nper kernel family (OPENBLAS_CORETYPE): recall, peak within 1 checkpoint, false per 100 series")
        for core in cores:
            t = merge(T, lambda k: k[1] == core and k[2] == method)
            print("  %-12s recall %s  peak %s  false/100 %.1f  (noise-only windows excluded by the dense check: %d)" % (
                core, pct(t["found"], t["goal"]), pct(t["peak"], t["found"]),
                100.0 * t["false"] / t["series"] if t["series"] else 0, t["excluded"]))
        if method == "level-v2":
            t = merge(T, lambda k: k[2] == method)
            if t["misses"]:
                print("\nmissed (>= 5x scatter):")
                for x in t["misses"]:
                    print("  " + x)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--coretypes", default=",".join(CORETYPES))
    g.add_argument("--kinds", default="")
    g.add_argument("--jobs", type=int, default=2)
    g.add_argument("--data", default=DATA)
    g.add_argument("--work", default="")
    g.add_argument("--seeds", default="", help="only these of each run's seeds (comma-separated)")
    g.add_argument("--regen", action="store_true", help="train again runs whose data file exists")
    g.add_argument("--reuse", action="store_true",
                   help="take a finished training from WORK/RUN (WORK given by --work) instead of training "
                        "again, and keep the work directories")
    e = sub.add_parser("eval")
    e.add_argument("--data", default=DATA)
    e.add_argument("--subset", action="store_true")
    e.add_argument("--json", default="")
    h = sub.add_parser("show")
    h.add_argument("--data", default=DATA)
    h.add_argument("--kinds", required=True, help="kinds or run ids (comma-separated)")
    h.add_argument("--metrics", default="", help="only these series (comma-separated)")
    a = p.parse_args()
    if a.cmd == "gen":
        gen(a)
    elif a.cmd == "show":
        sys.exit(show(a))
    else:
        sys.exit(evaluate(a))


if __name__ == "__main__":
    main()
