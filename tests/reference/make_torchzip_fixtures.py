#!/usr/bin/python3
"""Write the PyTorch zip checkpoint fixtures (tests/golden/torchzip/) and the
data-driven reader cases (tests/cases/torchzip/<case>/).

Run from anywhere with Debian's python3 and python3-torch:

    /usr/bin/python3 tests/reference/make_torchzip_fixtures.py

Golden checkpoints: one tiny random GPT-NeoX (C=32, NH=4, L=2, F=64, V=64,
max_position_embeddings 32), written by torch.save itself as
pytorch_model.bin in several ways, and by an independent safetensors writer
(tests/reference/gptneox_ref.py) as model.safetensors.  `st_f32/golden.safetensors`
holds the PyTorch reference logits of that model (gptneox_ref.forward).

Cases: each `input.bin` is a torch.save output or a zip put together here
byte by byte (hand-assembled pickles for the malicious ones); `expected` is
`ok` or `<error code>\t<substring of the message>`.  An ok case may carry
`tensors.safetensors`: the same tensors, which the reader must return
bit-identically.

The script is deterministic: a rerun writes byte-identical files, except
legacy_format, whose storage keys are object addresses.
"""
import collections
import io
import json
import os
import shutil
import struct
import sys
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gptneox_ref as ref  # noqa: E402  (make_config, make_weights, forward, safetensors writer)

torch.set_num_threads(1)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GOLD = os.path.join(ROOT, "tests", "golden", "torchzip")
CASES = os.path.join(ROOT, "tests", "cases", "torchzip")

C, NH, L, F_, V, MAXPOS = 32, 4, 2, 64, 64, 32
B, T = 2, 8


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def st_dtype(t):
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.bool: "BOOL", torch.uint8: "U8"}[t.dtype]


def write_st(path, sd):
    """state dict -> safetensors with the independent writer; F16 and BOOL
    are passed as the values they hold, so their bits survive."""
    tensors = {}
    for k, t in sd.items():
        dt = st_dtype(t)
        if dt == "BF16":
            raise ValueError("bf16 not used here")
        arr = t.detach().numpy()
        tensors[k] = (arr, dt)
    ref.write_safetensors(path, tensors, {"format": "pt"})
    back = ref.read_safetensors(path)
    for k, t in sd.items():
        assert np.array_equal(back[k], t.detach().float().numpy() if t.dtype != torch.bool
                              else t.numpy().astype(np.uint8)), k


def legacy_buffers():
    """What old Pythia exports carry besides the weights (ignored by the model)."""
    out = collections.OrderedDict()
    for l in range(L):
        p = "gpt_neox.layers.%d.attention." % l
        out[p + "bias"] = torch.tril(torch.ones(MAXPOS, MAXPOS, dtype=torch.bool)).view(
            1, 1, MAXPOS, MAXPOS)
        out[p + "masked_bias"] = torch.tensor(-1e9)
        rd = int(C // NH * 0.25)
        out[p + "rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rd, 2).float() / rd))
    return out


def check_roundtrip(path, sd):
    back = torch.load(path)
    assert list(back.keys()) == list(sd.keys())
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k


# --------------------------------------------------------------------------
# golden checkpoints
# --------------------------------------------------------------------------

def golden():
    cfg = ref.make_config(C, NH, L, F_, V, 0.25, 10000, True, "float32", max_pos=MAXPOS)
    W, g = ref.make_weights(cfg, seed=11)
    tokens = torch.randint(0, V, (B, T), generator=g)
    logits, loss, _ = ref.forward(cfg, W, tokens, record=False)

    sd32 = collections.OrderedDict((k, W[k].contiguous()) for k in W)
    sd32.update(legacy_buffers())

    def cfg_to(d, dtype_name):
        c = dict(cfg)
        c["torch_dtype"] = dtype_name
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f, indent=2)

    # safetensors twins
    d = os.path.join(GOLD, "st_f32")
    fresh(d)
    cfg_to(d, "float32")
    write_st(os.path.join(d, "model.safetensors"), sd32)
    with open(os.path.join(d, "tokens.json"), "w") as f:
        json.dump(tokens.tolist(), f)
    ref.write_safetensors(os.path.join(d, "golden.safetensors"),
                          {"logits": (logits.numpy(), "F32"), "loss": (loss.numpy(), "F32")})

    sd16 = collections.OrderedDict(
        (k, v.half() if v.dtype == torch.float32 else v) for k, v in sd32.items())
    d = os.path.join(GOLD, "st_f16")
    fresh(d)
    cfg_to(d, "float16")
    write_st(os.path.join(d, "model.safetensors"), sd16)

    # F32, protocol 2 (torch.save's default); embed_out saved as an
    # nn.Parameter, as a module's state dict can hold them
    d = os.path.join(GOLD, "bin_f32_p2")
    fresh(d)
    cfg_to(d, "float32")
    sdp = collections.OrderedDict(sd32)
    sdp["embed_out.weight"] = torch.nn.Parameter(sd32["embed_out.weight"], requires_grad=False)
    sdp._metadata = collections.OrderedDict([("", {"version": 1})])
    torch.save(sdp, os.path.join(d, "pytorch_model.bin"), pickle_protocol=2)
    check_roundtrip(os.path.join(d, "pytorch_model.bin"), sd32)

    # F16, protocol 4; every 1-D tensor is a view into one flat storage, so
    # storage offsets are not zero and storages are shared
    d = os.path.join(GOLD, "bin_f16_p4")
    fresh(d)
    cfg_to(d, "float16")
    ones = [k for k, v in sd16.items() if v.dim() == 1 and v.dtype == torch.float16]
    flat = torch.cat([sd16[k] for k in ones])
    views = collections.OrderedDict()
    off = 0
    for k, v in sd16.items():
        if k in ones:
            views[k] = flat[off:off + v.numel()]
            off += v.numel()
        else:
            views[k] = v
    torch.save(views, os.path.join(d, "pytorch_model.bin"), pickle_protocol=4)
    check_roundtrip(os.path.join(d, "pytorch_model.bin"), sd16)

    # sharded F32: two files and an index, as transformers writes them
    d = os.path.join(GOLD, "bin_sharded")
    fresh(d)
    cfg_to(d, "float32")
    names = list(sd32)
    half = len(names) // 2
    wm = {}
    for i, part in enumerate((names[:half], names[half:])):
        fn = "pytorch_model-%05d-of-00002.bin" % (i + 1)
        torch.save(collections.OrderedDict((k, sd32[k]) for k in part), os.path.join(d, fn))
        for k in part:
            wm[k] = fn
    with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size()
                                                  for v in sd32.values())},
                   "weight_map": wm}, f, indent=2)

    for name in sorted(os.listdir(GOLD)):
        sz = sum(os.path.getsize(os.path.join(GOLD, name, f))
                 for f in os.listdir(os.path.join(GOLD, name)))
        print("golden %-12s %7d bytes" % (name, sz))


# --------------------------------------------------------------------------
# hand-assembled pickles
# --------------------------------------------------------------------------

def uni(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def glob(mod, name):
    return b"c" + mod.encode() + b"\n" + name.encode() + b"\n"


def k1(i):
    return b"K" + bytes([i])


MARK, TUPLE, TUPLE2, REDUCE, SETITEMS, STOP = b"(", b"t", b"\x86", b"R", b"u", b"."
EMPTY_TUPLE, NEWFALSE, BINPERSID = b")", b"\x89", b"Q"
ODICT = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def persid(key, numel, cls="FloatStorage"):
    return MARK + uni("storage") + glob("torch", cls) + uni(key) + uni("cpu") + k1(numel) + \
        TUPLE + BINPERSID


def tensor(key="0", numel=6, offset=0, size=(2, 3), stride=(3, 1), cls="FloatStorage",
           fn="_rebuild_tensor_v2"):
    return glob("torch._utils", fn) + MARK + persid(key, numel, cls) + k1(offset) + \
        MARK + b"".join(k1(s) for s in size) + TUPLE + \
        MARK + b"".join(k1(s) for s in stride) + TUPLE + \
        NEWFALSE + ODICT + TUPLE + REDUCE


def state_dict(*entries):
    """entries: (name, value-pickle) pairs -> a whole protocol-2 data.pkl."""
    return b"\x80\x02" + ODICT + MARK + b"".join(uni(k) + v for k, v in entries) + \
        SETITEMS + STOP


def torch_zip(pkl, records, extra=None, prefix="archive", method=zipfile.ZIP_STORED,
              version=True):
    """A zip laid out as torch.save lays it out (data.pkl, data/<key>,
    version), without the 64-byte alignment."""
    bio = io.BytesIO()

    def put(z, name, raw):  # a fixed timestamp keeps the bytes reproducible
        z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), raw,
                   compress_type=method)

    with zipfile.ZipFile(bio, "w", method) as z:
        put(z, prefix + "/data.pkl", pkl)
        for key, raw in records.items():
            put(z, prefix + "/data/" + key, raw)
        for name, raw in (extra or {}).items():
            put(z, prefix + "/" + name, raw)
        if version:
            put(z, prefix + "/version", b"3\n")
    return bio.getvalue()


def f32(*vals):
    return struct.pack("<%df" % len(vals), *vals)


SIX = f32(0, 1, 2, 3, 4, 5)


def case(name, data, expected, tensors=None):
    d = os.path.join(CASES, name)
    os.makedirs(d)
    with open(os.path.join(d, "input.bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(d, "expected"), "w") as f:
        f.write(expected + "\n")
    if tensors is not None:
        write_st(os.path.join(d, "tensors.safetensors"), tensors)


def torch_bytes(obj, **kw):
    bio = io.BytesIO()
    torch.save(obj, bio, **kw)
    return bio.getvalue()


def cases():
    fresh(CASES)
    g = torch.Generator().manual_seed(5)
    sd = collections.OrderedDict([
        ("w", torch.randn(3, 5, generator=g)),
        ("h", torch.randn(4, generator=g).half()),
        ("ids_mask", torch.tensor([True, False, True])),
        ("scalar", torch.tensor(2.5)),
        ("empty", torch.zeros(0, 4)),
    ])
    # ---- valid ----
    case("valid_p2", torch_bytes(sd), "ok", sd)
    case("valid_p4", torch_bytes(sd, pickle_protocol=4), "ok", sd)
    # the same archive rewritten with deflate: records are read, not mapped
    src = zipfile.ZipFile(io.BytesIO(torch_bytes(sd)))
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(zipfile.ZipInfo(info.filename, date_time=info.date_time),
                       src.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    case("valid_deflated", bio.getvalue(), "ok", sd)
    # another folder name, hand-made zip, a parameter and _rebuild_tensor
    pkl = state_dict(("a", tensor()),
                     ("p", glob("torch._utils", "_rebuild_parameter") + MARK +
                      tensor("1", 4, 0, (4,), (1,)) + b"\x88" + ODICT + TUPLE + REDUCE),
                     ("v1", glob("torch._utils", "_rebuild_tensor") + MARK + persid("0", 6) +
                      k1(2) + MARK + k1(4) + TUPLE + MARK + k1(1) + TUPLE + TUPLE + REDUCE))
    case("valid_handmade", torch_zip(pkl, {"0": SIX, "1": f32(9, 8, 7, 6)}, prefix="step1000"),
         "ok", collections.OrderedDict([
             ("a", torch.arange(6.0).reshape(2, 3)), ("p", torch.tensor([9.0, 8, 7, 6])),
             ("v1", torch.tensor([2.0, 3, 4, 5]))]))

    # zip64 central directory entries and end records, as torch.save writes
    # them past 4 GiB, made small by lowering zipfile's limits for a moment
    saved = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 64, 1
    try:
        z64 = torch_zip(state_dict(("a", tensor())), {"0": SIX})
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved
    assert b"PK\x06\x06" in z64 and b"\x01\x00\x08\x00" in z64
    case("valid_zip64", z64, "ok", collections.OrderedDict([("a", torch.arange(6.0).reshape(2, 3))]))

    # CRC fields all zero, as torch.save writes when told not to compute them
    # (torch.serialization.set_crc32_options(False)): not checked, accepted
    zc = bytearray(torch_bytes(sd))
    zz = zipfile.ZipFile(io.BytesIO(bytes(zc)))
    for info in zz.infolist():
        zc[info.header_offset + 14:info.header_offset + 18] = bytes(4)
    p = zz.start_dir
    while zc[p:p + 4] == b"PK\x01\x02":
        zc[p + 16:p + 20] = bytes(4)
        p += 46 + struct.unpack("<H", zc[p + 28:p + 30])[0] + \
            struct.unpack("<H", zc[p + 30:p + 32])[0] + struct.unpack("<H", zc[p + 32:p + 34])[0]
    assert all(i.CRC == 0 for i in zipfile.ZipFile(io.BytesIO(bytes(zc))).infolist())
    case("valid_crc_not_recorded", bytes(zc), "ok", sd)

    # ---- torch.save outputs the reader refuses ----
    w = torch.arange(12.0).reshape(3, 4)
    case("noncontiguous", torch_bytes(collections.OrderedDict([("wt", w.t())])),
         "unsupported\tstrides (1, 4) of shape (4, 3) are not contiguous (want (3, 1))")
    case("legacy_format", torch_bytes(sd, _use_new_zipfile_serialization=False),
         "unsupported\tlegacy torch.save format")
    case("nested_dict", torch_bytes({"model": sd}),
         "format\tvalue of \"model\" is a dict, not a tensor")
    case("complex_storage", torch_bytes({"c": torch.zeros(2, dtype=torch.complex64)}),
         "unsupported\tstorage type torch.ComplexFloatStorage is not supported")

    # ---- malicious or broken, assembled by hand ----
    def z(pkl, records=None, **kw):
        return torch_zip(pkl, {"0": SIX} if records is None else records, **kw)

    evil = b"\x80\x02" + glob("os", "system") + MARK + uni("echo pwned") + TUPLE + REDUCE + STOP
    case("global_os_system", z(evil), "unsupported\tbyte 2: refusing GLOBAL os.system")
    evil4 = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94" + MARK + uni("1+1") +
             TUPLE + REDUCE + STOP)
    case("stack_global_eval", z(evil4), "unsupported\tbyte 20: refusing STACK_GLOBAL builtins.eval")
    lfb = b"\x80\x02" + glob("torch.storage", "_load_from_bytes") + MARK + \
        b"C\x04abcd" + TUPLE + REDUCE + STOP
    case("load_from_bytes", z(lfb),
         "unsupported\tbyte 2: refusing GLOBAL torch.storage._load_from_bytes")
    # opcodes outside the subset: INST, NEWOBJ, and a byte that is no opcode
    case("opcode_inst", z(b"\x80\x02" + b"ios\nsystem\n" + STOP),
         "unsupported\tbyte 2: opcode INST (0x69)")
    case("opcode_newobj", z(b"\x80\x02" + ODICT[:-2] + EMPTY_TUPLE + b"\x81" + STOP),
         "unsupported\tbyte 28: opcode NEWOBJ (0x81)")
    case("opcode_unknown", z(b"\x80\x02" + b"\xff" + STOP),
         "unsupported\tbyte 2: opcode unknown (0xff)")
    # REDUCE on callables outside the whitelist
    case("reduce_storage_class",
         z(b"\x80\x02" + glob("torch", "FloatStorage") + EMPTY_TUPLE + REDUCE + STOP),
         "unsupported\tbyte 23: REDUCE calls torch.FloatStorage, which is not callable here")
    case("reduce_string", z(b"\x80\x02" + uni("os.system") + EMPTY_TUPLE + REDUCE + STOP),
         "unsupported\tbyte 17: REDUCE calls a str, not a whitelisted global")
    case("ordereddict_args",
         z(b"\x80\x02" + glob("collections", "OrderedDict") + MARK + uni("x") + TUPLE + REDUCE +
           STOP),
         "unsupported\tcollections.OrderedDict called with arguments")
    case("build_on_tensor", z(state_dict(("a", tensor() + b"}" + b"b"))),
         "unsupported\tBUILD of a tensor")
    # persistent ids and records
    case("missing_record", z(state_dict(("a", tensor(key="7")))),
         "format\tnames storage record \"archive/data/7\", which is not in the archive")
    case("key_with_slash", z(state_dict(("a", tensor(key="../0")))),
         "format\tnot a plain record name")
    case("persid_not_storage",
         z(b"\x80\x02" + MARK + uni("module") + uni("os") + TUPLE + BINPERSID + STOP),
         "unsupported\tpersistent id is not a ('storage'")
    case("short_record", z(state_dict(("a", tensor())), {"0": SIX[:8]}),
         "format\tstorage record \"archive/data/0\" holds 8 bytes, but its persistent id declares "
         "6 elements of F32 (24 bytes)")
    case("tensor_past_storage", z(state_dict(("a", tensor(offset=2)))),
         "format\ttensor \"a\" (data.pkl byte")
    case("tensor_past_storage_size", z(state_dict(("a", tensor(size=(3, 3), stride=(3, 1))))),
         "format\telements [0, 9) reach past its storage \"0\" of 6 elements")
    case("dtype_conflict", z(state_dict(("a", tensor()), ("b", tensor(cls="IntStorage")))),
         "format\tstorage \"0\" named again as 6 x I32 (first 6 x F32)")
    # the pickle itself
    good = state_dict(("a", tensor()))
    case("truncated_pkl", z(good[:len(good) // 2]), "format\tdata.pkl is truncated")
    case("no_stop", z(good[:-1]), "format\tends at byte")
    case("stack_underflow", z(b"\x80\x02" + TUPLE2 + STOP), "format\tTUPLE2 needs 2 values")
    # found by fuzz/fuzz_pickle.c: a tuple of an empty MARK before any value
    case("empty_mark_tuple", z(b"\x80\x02" + MARK + TUPLE + STOP),
         "format\tdata.pkl holds a tuple, not a state dict")
    case("memo_get_unset", z(b"\x80\x02" + b"h\x05" + STOP),
         "format\tBINGET of memo slot 5, which was never set")
    case("memo_put_huge", z(b"\x80\x02N" + b"r\xff\xff\xff\xff" + STOP),
         "format\tLONG_BINPUT to memo slot 4294967295, over the limit")
    case("marks_too_deep", z(b"\x80\x02" + b"(" * 5000 + STOP), "format\tmore than 4096 nested MARKs")
    case("top_not_dict", z(b"\x80\x02" + k1(3) + STOP), "format\tdata.pkl holds an int, not a state dict")
    case("key_not_string", z(b"\x80\x02" + ODICT + k1(1) + tensor() + b"s" + STOP),
         "format\ta state dict key is an int")
    case("bad_protocol", z(b"\x80\x09N."), "unsupported\tpickle protocol 9")
    case("long1_too_big", z(b"\x80\x02\x8a\x09" + b"\x01" * 9 + STOP),
         "unsupported\tLONG1 of 9 bytes")
    # the archive
    full = z(good)
    case("truncated_zip", full[:len(full) - 30], "format\tnot a readable zip archive")
    case("not_zip", b"hello, this is not a checkpoint at all", "format\tnot a zip archive")
    case("empty_file", b"", "format\tempty file")
    case("no_data_pkl", torch_zip(good, {"0": SIX}, prefix="a/b"),
         "format\twithout a <folder>/data.pkl")
    case("no_version", z(good, version=False), "format\tno archive/version record")
    case("big_endian", z(good, extra={"byteorder": b"big"}),
         "unsupported\tbig-endian checkpoint")
    # one bit flipped inside the stored record: its CRC no longer matches
    i = full.index(SIX)
    flipped = full[:i] + bytes([full[i] ^ 0x01]) + full[i + 1:]
    case("crc_mismatch", flipped, "format\trecord \"archive/data/0\" fails its CRC-32 check")
    n = len(os.listdir(CASES))
    print("cases: %d in %s" % (n, CASES))


def main():
    golden()
    cases()
    return 0


if __name__ == "__main__":
    sys.exit(main())
