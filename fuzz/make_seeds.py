#!/usr/bin/python3
"""make_seeds.py - write the seed corpora of the fuzz harnesses.

    fuzz/make_seeds.py [--worker build/bin/ckpt-worker]

Run from the repository root.  Each fuzz/corpus/NAME/ gets small valid
files and the existing invalid cases of tests/cases, so the fuzzer starts
from both sides of every check.  Files named crash-*, leak-*, timeout-* or
oom-* are regression inputs kept from fuzzing runs (fuzz/README.md); this
script never touches them.  Python 3 standard library only (the task.json
seeds come from `ckpt-worker train`, which must be built).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

ROOT = "fuzz/corpus"
KEEP = ("crash-", "leak-", "timeout-", "oom-", "slow-unit-")


def reset(name):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith(KEEP):
            os.remove(os.path.join(d, f))
    return d


def put(d, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cases(parser, filename):
    base = os.path.join("tests/cases", parser)
    for c in sorted(os.listdir(base)):
        p = os.path.join(base, c, filename)
        if os.path.isfile(p):
            yield c, p


def npy(descr, shape, payload, version=1, fortran=False):
    hdr = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (
        descr, "True" if fortran else "False",
        "".join("%d, " % s for s in shape) if len(shape) != 1 else "%d," % shape[0])
    pre = 10 if version == 1 else 12
    pad = (64 - (pre + len(hdr) + 1) % 64) % 64
    hdr = hdr + " " * pad + "\n"
    if version == 1:
        head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr))
    else:
        head = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(hdr))
    return head + hdr.encode() + payload


def main(argv):
    worker = "build/bin/ckpt-worker"
    if len(argv) == 2 and argv[0] == "--worker":
        worker = argv[1]

    d = reset("safetensors")
    for c, p in cases("safetensors", "input.safetensors"):
        shutil.copy(p, os.path.join(d, c))

    d = reset("torchzip")
    for c, p in cases("torchzip", "input.bin"):
        shutil.copy(p, os.path.join(d, c))

    # pickle: [n] [n x u16 record sizes] data.pkl, from the torchzip fixtures
    d = reset("pickle")
    for c, p in cases("torchzip", "input.bin"):
        try:
            z = zipfile.ZipFile(p)
            names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            continue
        pk = [n for n in names if n.endswith("/data.pkl")]
        if len(pk) != 1:
            continue
        top = pk[0].split("/")[0]
        sizes = []
        for k in range(8):
            n = "%s/data/%d" % (top, k)
            if n not in names:
                break
            sizes.append(min(z.getinfo(n).file_size, 65535))
        try:
            body = z.read(pk[0])
        except Exception:
            continue
        put(d, c, bytes([len(sizes)]) + b"".join(struct.pack("<H", s) for s in sizes) + body)

    d = reset("model_config")
    for c, p in cases("config", "config.json"):
        shutil.copy(p, os.path.join(d, c))

    d = reset("tokenizer")
    for c, p in cases("tokenizer", "input.json"):
        shutil.copy(p, os.path.join(d, c))

    d = reset("tokenize")
    with open("tests/cases/tokenizer/corpus.json") as f:
        corpus = json.load(f)
    texts = [t for t in corpus if isinstance(t, str)] if isinstance(corpus, list) else []
    for i, t in enumerate(texts[:40]):
        put(d, "text%02d" % i, t)
    put(d, "eot", "a<|endoftext|>b   c\n\n\tdone")
    put(d, "illformed", b"ok \xc3\x28 \xed\xa0\x80 \xf4\x90\x80\x80")

    d = reset("npy")
    f32 = struct.pack("<6f", 0, 1, 2.5, -3, 1e9, -0.0)
    put(d, "f32_2x3", npy("<f4", (2, 3), f32))
    put(d, "f32_6", npy("<f4", (6,), f32))
    put(d, "f32_scalar", npy("<f4", (), f32[:4]))
    put(d, "f32_empty", npy("<f4", (0, 3), b""))
    put(d, "f32_v2", npy("<f4", (3, 2), f32, version=2))
    put(d, "f32_fortran", npy("<f4", (2, 3), f32, fortran=True))
    put(d, "i4", npy("<i4", (4,), struct.pack("<4i", 1, 2, 3, 4)))
    put(d, "truncated", npy("<f4", (2, 3), f32[:10]))
    put(d, "u2_2d", npy("<u2", (2, 2), struct.pack("<4H", 1, 2, 3, 65535)))

    # tokens: [kind: 0 json 1 u16 2 bin 3 u32 4 npy] [ctx] file
    d = reset("tokens")
    put(d, "json", b"\x00\x04" + b"[[1, 2, 3], [4, 5, 6]]")
    put(d, "json_ragged", b"\x00\x04" + b"[[1, 2, 3], [4, 5]]")
    put(d, "json_negative", b"\x00\x04" + b"[[1, -2]]")
    put(d, "u16", b"\x01\x03" + struct.pack("<7H", 0, 1, 50276, 65535, 7, 300, 9))
    put(d, "bin_odd", b"\x02\x02" + b"\x01\x00\x02")
    put(d, "u32", b"\x03\x02" + struct.pack("<5I", 0, 1, 2**31 - 1, 7, 9))
    put(d, "u32_big", b"\x03\x01" + struct.pack("<2I", 2**31, 1))
    put(d, "ctx0", b"\x01\x00" + struct.pack("<4H", 1, 2, 3, 4))
    put(d, "npy_i4_1d", b"\x04\x02" + npy("<i4", (5,), struct.pack("<5i", 1, 2, 3, 4, 5)))
    put(d, "npy_i8_2d", b"\x04\x02" + npy("<i8", (2, 2), struct.pack("<4q", 1, 2, 3, 4)))
    put(d, "npy_u2", b"\x04\x03" + npy("<u2", (6,), struct.pack("<6H", *range(6))))
    put(d, "npy_u4_neg", b"\x04\x01" + npy("<i4", (2,), struct.pack("<2i", -1, 2)))
    put(d, "npy_3d", b"\x04\x01" + npy("<i4", (1, 1, 2), struct.pack("<2i", 1, 2)))

    d = reset("probe_set")
    def cls(n, T, seed=7):
        out = []
        x = seed
        for i in range(n):
            tk = []
            for _ in range(T):
                x = (x * 1103515245 + 12345) % 2**31
                tk.append(x % 96)
            out.append({"tokens": tk, "labels": [None] + ["even" if t % 2 == 0 else "odd" for t in tk[1:]]})
        return out
    put(d, "parity", json.dumps({"name": "parity", "kind": "classification", "sequences": cls(10, 6)}))
    put(d, "seqlabel", json.dumps({"name": "seq value", "kind": "regression", "layers": [-1, 1],
                                   "sequences": [{"tokens": list(range(1, 6 + i % 4)), "label": (i * 7) % 11 / 3.0}
                                                 for i in range(20)]}))
    put(d, "ints", json.dumps({"name": "ints", "kind": "classification",
                               "sequences": [{"tokens": [i, i + 1], "label": i % 2} for i in range(12)]}))
    put(d, "bools", json.dumps({"name": "b", "kind": "classification",
                                "sequences": [{"tokens": [i, 3], "labels": [i % 2 == 0, None]} for i in range(12)]}))
    put(d, "mixed", json.dumps({"name": "m", "kind": "classification",
                                "sequences": cls(6, 3) + [{"tokens": [1, 2], "labels": [None, 3]}]}))
    put(d, "fewseqs", json.dumps({"name": "f", "kind": "classification", "sequences": cls(4, 30)}))
    put(d, "unknown_key", json.dumps({"name": "u", "kind": "classification", "sequences": cls(6, 3), "x": 1}))
    put(d, "notobject", "[1, 2]")

    d = reset("task")
    if os.access(worker, os.X_OK):
        with tempfile.TemporaryDirectory() as tmp:
            runs = [("modadd_p5", ["--task", "modular-addition", "--p", "5", "--steps", "1"]),
                    ("modadd_p7", ["--task", "modular-addition", "--p", "7", "--train-frac", "0.5",
                                   "--steps", "1"]),
                    ("induction", ["--task", "induction", "--vocab", "16", "--seq-len", "8",
                                   "--batch", "2", "--steps", "1"])]
            for name, args in runs:
                out = os.path.join(tmp, name)
                subprocess.run([worker, "train", "--out", out, "--d-model", "16", "--heads", "2",
                                "--d-mlp", "8", "--layers", "1"] + args, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                shutil.copy(os.path.join(out, "task.json"), os.path.join(d, name))
    else:
        print("make_seeds: %s not built: no task.json seeds" % worker, file=sys.stderr)
    put(d, "not_json", "{\"task\": ")
    put(d, "unknown_task", json.dumps({"task": "sorting", "seed": 1, "vocab_size": 4, "seq_len": 3}))

    d = reset("sae")
    # the cfg.json of every SAELens case of tests/cases/sae (d_in 4, d_sae 6,
    # the harness's weights)
    for c in sorted(os.listdir("tests/cases/sae")):
        p = os.path.join("tests/cases/sae", c, "sae", "cfg.json")
        if os.path.isfile(p):
            shutil.copy(p, os.path.join(d, "case_" + c))
    base = {"architecture": "topk", "d_in": 4, "d_sae": 6, "dtype": "float32", "device": "cpu",
            "model_name": "gpt-neox", "hook_name": "blocks.0.hook_resid_post", "hook_layer": 0,
            "hook_head_index": None, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 2},
            "apply_b_dec_to_input": True, "finetuning_scaling_factor": False,
            "sae_lens_training_version": None, "prepend_bos": False, "dataset_path": "",
            "dataset_trust_remote_code": False, "context_size": 64, "normalize_activations": "none",
            "neuronpedia_id": None, "model_from_pretrained_kwargs": {}, "seqpos_slice": [None],
            "ckptd": {"norm_scaling_factor": 1.5, "train_tokens": 1024, "seed": 0, "warm_start": False}}
    put(d, "topk", json.dumps(base, indent=2))
    relu = dict(base, architecture="standard", activation_fn_str="relu", activation_fn_kwargs={})
    put(d, "relu", json.dumps(relu))
    put(d, "wrong_sizes", json.dumps(dict(base, d_in=8, d_sae=4)))
    put(d, "huge_sizes", json.dumps(dict(base, d_in=46341, d_sae=46341)))
    put(d, "k_too_big", json.dumps(dict(base, activation_fn_kwargs={"k": 9})))
    put(d, "norm_expected", json.dumps(dict(base, normalize_activations="expected_average_only_in")))

    d = reset("hub")
    lfs = "sha256:" + "ab" * 32
    put(d, "tree", json.dumps([
        {"type": "file", "path": "config.json", "size": 570, "oid": "0" * 40},
        {"type": "file", "path": "model.safetensors", "size": 123456,
         "lfs": {"oid": lfs, "size": 123456, "pointerSize": 134}},
        {"type": "file", "path": "task.json", "size": 10},
        {"type": "directory", "path": "sub", "size": 0}]))
    put(d, "tree_sharded", json.dumps([
        {"type": "file", "path": "config.json", "size": 570},
        {"type": "file", "path": "model.safetensors.index.json", "size": 200},
        {"type": "file", "path": "model-00001-of-00002.safetensors", "size": 100,
         "lfs": {"oid": "cd" * 32, "size": 100}},
        {"type": "file", "path": "model-00002-of-00002.safetensors", "size": 100}]))
    put(d, "tree_escape", json.dumps([{"type": "file", "path": "../etc/passwd", "size": 1}]))
    put(d, "tree_pytorch", json.dumps([{"type": "file", "path": "config.json"},
                                       {"type": "file", "path": "pytorch_model.bin", "size": -1}]))
    put(d, "refs", json.dumps({"branches": [{"name": "main", "ref": "refs/heads/main"},
                                            {"name": "step1000", "ref": "refs/heads/step1000"},
                                            {"name": "step0"}, {"name": "step1000"},
                                            {"name": "step12-rc"}], "tags": [], "converts": []}))
    put(d, "refs_none", json.dumps({"branches": [{"name": "main"}]}))
    put(d, "index", json.dumps({"metadata": {"total_size": 200}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors"}}))
    put(d, "index_escape", json.dumps({"weight_map": {"a": "/abs/path.safetensors"}}))

    d = reset("daemon_config")
    for p in ("deploy/systemd/ckptd.json", "deploy/container/ckptd.json"):
        if os.path.isfile(p):
            shutil.copy(p, os.path.join(d, os.path.basename(os.path.dirname(p))))
    put(d, "full", json.dumps({
        "database": "dbname=ckptd", "node": "gpu07", "workers": 2, "worker_path": "",
        "worker_threads": 0, "worker_timeout_s": 3600, "worker_memory_mb": 0, "worker_cpu_s": 0,
        "spool_dir": "./var/spool", "lease_s": 60, "heartbeat_s": 10, "poll_s": 5,
        "db_statement_timeout_s": 600, "db_idle_in_transaction_timeout_s": 120,
        "backoff_base_s": 5, "backoff_max_s": 600, "shutdown_grace_s": 30,
        "cache_dir": "./var/cache", "cache_budget_gb": 0, "prefetch": 1, "fetch_parallel": 4,
        "fetch_low_speed_bytes": 1024, "fetch_low_speed_s": 30, "fetch_connect_timeout_s": 15,
        "fetch_retries": 5, "fetch_backoff_base_s": 1, "fetch_backoff_max_s": 60, "ca_file": "",
        "metrics_listen": "127.0.0.1:9464", "metrics_allow_remote": False, "healthz_max_age_s": 30,
        "artifact_dir": "./var/artifacts"}, indent=1))
    put(d, "typo", '{"workerz": 2}')
    put(d, "big_int", '{"workers": 4294967297}')
    put(d, "lease", '{"lease_s": 10, "heartbeat_s": 6}')
    put(d, "remote", '{"metrics_listen": "[::1]:9464", "metrics_allow_remote": true}')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
