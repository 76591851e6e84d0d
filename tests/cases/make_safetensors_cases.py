#!/usr/bin/python3
"""Write the safetensors parser cases under tests/cases/safetensors/.

Each case is a directory holding `input.safetensors` and `expected`: one
line, either `ok` or the err_code_name of the error, a TAB, and a substring
that err_str() must contain.  tests/test_safetensors.c walks the directory,
so adding a case here needs no C code.  The valid cases' contents are also
checked by name in the test (valid_f32, valid_mixed, valid_scalar).

Plain python3 (struct + json), deterministic; run from the repository root:
    /usr/bin/python3 tests/cases/make_safetensors_cases.py
"""
import json
import os
import shutil
import struct

ROOT = os.path.join("tests", "cases", "safetensors")


def f32(*xs):
    return struct.pack("<%df" % len(xs), *xs)


def header_bytes(header):
    """Header as compact JSON, padded with spaces to a multiple of 8."""
    if isinstance(header, (bytes, str)):
        text = header.encode() if isinstance(header, str) else header
    else:
        text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return text


def st_file(header, data=b""):
    h = header_bytes(header)
    return struct.pack("<Q", len(h)) + h + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


CASES = {}


def case(name, expected, content):
    CASES[name] = (expected, content)


# ---- valid files: the test checks their contents by name ----

case("valid_f32", "ok", st_file(
    {"a": entry("F32", [2, 3], 0, 24), "b": entry("F32", [4], 24, 40)},
    f32(0, 1, 2, 3, 4, 5) + f32(1.5, -2.0, 0.25, 3.25)))

# Header order differs from offset order; st_get must follow offsets.
case("valid_mixed", "ok", st_file(
    {"__metadata__": {"format": "pt", "step": "1000"},
     "ids": entry("I64", [3], 14, 38),
     "half": entry("F16", [2, 2], 0, 8),
     "brain": entry("BF16", [3], 8, 14)},
    struct.pack("<4H", 0x3C00, 0xC000, 0x7BFF, 0x0001)
    + struct.pack("<3H", 0x3F80, 0xC000, 0x7F80)
    + struct.pack("<3q", 1, -2, 1 << 40)))

# A scalar (shape []) and a zero-size tensor sharing its end offset.
case("valid_scalar", "ok", st_file(
    {"s": entry("F32", [], 0, 4), "empty": entry("F32", [0, 4], 4, 4)},
    f32(3.5)))

case("valid_no_tensors", "ok", st_file({}))
case("valid_metadata_only", "ok", st_file({"__metadata__": {"k": "v"}}))

# ---- the length prefix ----

good = st_file({"w": entry("F32", [16], 0, 64)}, f32(*range(16)))
case("truncated_file", "format\texceed data buffer of 40 bytes", good[:len(good) - 24])
case("empty_file", "format\tshorter than the 8-byte header length", b"")
case("short_header", "format\tshorter than the 8-byte header length", b"\x10\x00\x00\x00\x00")
case("header_len_beyond_file", "format\truns past the end",
     struct.pack("<Q", 1000) + b'{"a":{}}')
case("header_len_huge", "format\texceeds the limit of 104857600 bytes",
     struct.pack("<Q", 200 * 1024 * 1024) + b"{}      ")
case("header_len_max_u64", "format\texceeds the limit",
     struct.pack("<Q", 0xFFFFFFFFFFFFFFFF) + b"{}      ")
case("header_len_zero", "format\tnot valid JSON", struct.pack("<Q", 0))

# ---- the JSON ----

case("bad_json", "format\tnot valid JSON",
     st_file('{"a": {"dtype": "F32", "shape": [1], '))
case("header_not_object", "format\theader is not a JSON object", st_file("[1, 2]"))
case("header_string", "format\theader is not a JSON object", st_file('"F32"'))
case("duplicate_name", "format\tduplicate tensor name",
     st_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
             '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(1, 2)))

# ---- entries ----

case("entry_not_object", "format\ttensor \"a\": entry is not a JSON object",
     st_file({"a": [1, 2]}))
case("missing_dtype", "format\ttensor \"a\": missing \"dtype\"",
     st_file({"a": {"shape": [1], "data_offsets": [0, 4]}}, f32(1)))
case("dtype_not_string", "format\t\"dtype\" is not a string",
     st_file({"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}, f32(1)))
case("unknown_dtype", "format\tunknown dtype \"Q4_0\"",
     st_file({"a": entry("Q4_0", [1], 0, 4)}, f32(1)))
case("dtype_wrong_case", "format\tunknown dtype \"f32\"",
     st_file({"a": entry("f32", [1], 0, 4)}, f32(1)))
case("missing_shape", "format\tmissing \"shape\"",
     st_file({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, f32(1)))
case("shape_not_array", "format\t\"shape\" is not an array",
     st_file({"a": entry("F32", 6, 0, 24)}, f32(*range(6))))
case("shape_negative", "format\ttensor \"a\": \"shape\"[1] is not a non-negative integer",
     st_file({"a": entry("F32", [2, -3], 0, 24)}, f32(*range(6))))
case("shape_float", "format\t\"shape\"[0] is not a non-negative integer",
     st_file({"a": entry("F32", [2.0], 0, 8)}, f32(1, 2)))
case("shape_too_many_dims", "format\thas 9 dimensions, more than 8",
     st_file({"a": entry("F32", [1] * 9, 0, 4)}, f32(1)))
case("shape_overflow", "format\toverflows",
     st_file({"a": entry("F32", [1 << 62, 1 << 62, 0], 0, 0)}))
case("shape_bytes_overflow", "format\toverflows",
     st_file({"a": entry("F64", [1 << 62], 0, 0)}))
case("missing_offsets", "format\tmissing \"data_offsets\"",
     st_file({"a": {"dtype": "F32", "shape": [1]}}, f32(1)))
case("offsets_wrong_count", "format\t\"data_offsets\" must be an array of 2 integers",
     st_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, f32(1, 2)))
case("offsets_not_array", "format\t\"data_offsets\" must be an array of 2 integers",
     st_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": 4}}, f32(1)))
case("offsets_negative", "format\t\"data_offsets\" must be non-negative integers",
     st_file({"a": entry("F32", [1], -4, 0)}, f32(1)))
case("offsets_not_integers", "format\t\"data_offsets\" must be non-negative integers",
     st_file({"a": entry("F32", [1], 0, "4")}, f32(1)))
case("offsets_reversed", "format\tdata_offsets [8, 0] have begin > end",
     st_file({"a": entry("F32", [2], 8, 0)}, f32(1, 2)))
case("offsets_out_of_range", "format\ttensor \"a\": data_offsets [0, 1000] exceed data buffer of 16 bytes",
     st_file({"a": entry("F32", [250], 0, 1000)}, f32(1, 2, 3, 4)))
case("offsets_huge", "format\texceed data buffer",
     st_file({"a": entry("U8", [4], (1 << 63) - 5, (1 << 63) - 1)}, f32(1)))
case("size_mismatch", "format\tspan 16 bytes but shape and dtype F32 need 12",
     st_file({"a": entry("F32", [3], 0, 16)}, f32(1, 2, 3, 4)))

# ---- layout of the data buffer ----

case("overlap", "format\toverlap tensor \"a\"",
     st_file({"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)},
             f32(*range(6))))
case("overlap_zero_size_inside", "format\toverlap",
     st_file({"a": entry("F32", [4], 0, 16), "z": entry("F32", [0], 8, 8)},
             f32(*range(4))))
case("hole", "format\thole: bytes [8, 16) before tensor \"b\"",
     st_file({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 16, 24)},
             f32(*range(6))))
case("hole_at_start", "format\thole: bytes [0, 4)",
     st_file({"a": entry("F32", [1], 4, 8)}, f32(1, 2)))
case("trailing_bytes", "format\tafter the last tensor",
     st_file({"a": entry("F32", [2], 0, 8)}, f32(1, 2, 3)))
case("data_without_tensors", "format\thole",
     st_file({}, f32(1)))

# ---- metadata ----

case("metadata_not_strings", "format\t\"__metadata__\" value for \"step\" is not a string",
     st_file({"__metadata__": {"format": "pt", "step": 1000}}))
case("metadata_not_object", "format\t\"__metadata__\" is not a JSON object",
     st_file({"__metadata__": ["pt"]}))


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    for name in sorted(CASES):
        expected, content = CASES[name]
        d = os.path.join(ROOT, name)
        os.makedirs(d)
        with open(os.path.join(d, "input.safetensors"), "wb") as f:
            f.write(content)
        with open(os.path.join(d, "expected"), "w") as f:
            f.write(expected + "\n")
    print("wrote %d cases to %s" % (len(CASES), ROOT))


if __name__ == "__main__":
    main()
