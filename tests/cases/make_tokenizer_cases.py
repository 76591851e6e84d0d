#!/usr/bin/python3
"""Write the tokenizer.json cases under tests/cases/tokenizer/.

Each case is a directory with `input.json` and `expected`.  `expected` is
either `ok` followed by lines `["text", [ids...]]` (the ids worked out by
hand from the rules in workers/text/tokenizer.h), or one line: the
err_code_name of the load error, a TAB, and a substring of its message.
tests/test_tokenizer.c walks the directory.

The base is TINY below: a hand-written byte-level BPE tokenizer with the
GPT-NeoX-20B file's shape (NFC, ByteLevel, added tokens of both kinds).
Plain python3, deterministic; run from the repository root:
    /usr/bin/python3 tests/cases/make_tokenizer_cases.py
"""
import copy
import json
import os
import shutil

ROOT = os.path.join("tests", "cases", "tokenizer")

# byte-level spellings: space is "\u0120" (G-dot), "\n" is "\u010a",
# 0xC3 0xA9 (e-acute) is "\u00c3\u00a9"
TINY = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
        {"id": 0, "content": "<|endoftext|>", "special": True, "normalized": False,
         "single_word": False, "lstrip": False, "rstrip": False},
        {"id": 20, "content": "  ", "special": False, "normalized": True},
        {"id": 21, "content": "   ", "special": False, "normalized": True},
        {"id": 22, "content": "ab!", "special": False, "normalized": False},
        {"id": 23, "content": "b!cd", "special": False, "normalized": False},
    ],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
    "model": {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": False,
        "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "d": 4, "\u0120": 5, "ab": 6,
                  "bc": 7, "abc": 8, "\u0120a": 9, "\u010a": 10, "'": 11, "s": 12,
                  "\u00c3": 13, "\u00a9": 14, "\u00c3\u00a9": 15, "1": 16, "2": 17, "12": 18,
                  "!": 19},
        "merges": ["b c", "a b", "a bc", "\u0120 a", "\u00c3 \u00a9", "1 2"],
    },
}

# text -> ids, worked out by hand
TINY_ENCODINGS = [
    ["", []],
    ["abc", [8]],           # b c (rank 0) before a b (rank 1), then a bc
    ["ab", [6]],
    ["abd", [6, 4]],
    [" a", [9]],
    [" ab", [5, 6]],        # a b (rank 1) before G a (rank 3); no G ab
    ["a  b", [1, 20, 2]],   # two spaces: added token
    ["a    b", [1, 21, 5, 2]],      # 3 spaces (longest), then " b"
    ["a     b", [1, 21, 20, 2]],    # 3 + 2
    ["<|endoftext|>abc", [0, 8]],
    ["ab!cd", [22, 3, 4]],  # leftmost wins over the longer b!cd
    ["b!cd", [23]],
    ["e\u0301", None],      # filled below: NFC makes it U+00E9
    ["\u00e9", None],
    ["12", [18]],
    ["a's", [1, 11, 12]],   # contraction 's
    ["a\n\nb", [1, 10, 10, 2]],
    ["!!", [19, 19]],
]
for row in TINY_ENCODINGS:
    if row[1] is None:
        # 'e' is not in TINY's vocabulary: the decomposed form is
        # encodable only because NFC composes it into 0xC3 0xA9
        row[1] = [15]

SWAPPED = copy.deepcopy(TINY)
SWAPPED["model"]["merges"] = ["a b", "b c", "a bc", "\u0120 a", "\u00c3 \u00a9", "1 2"]
SWAPPED_ENCODINGS = [["abc", [6, 3]], ["bcab", [7, 6]], ["ab", [6]]]

NEW_MERGES = copy.deepcopy(TINY)
NEW_MERGES["model"]["merges"] = [m.split(" ") for m in TINY["model"]["merges"]]

PREFIX = copy.deepcopy(TINY)
PREFIX["pre_tokenizer"]["add_prefix_space"] = True
PREFIX_ENCODINGS = [["a", [9]], [" a", [9]], ["<|endoftext|>a", [0, 9]], ["ab", [5, 6]]]


def variant(**changes):
    t = copy.deepcopy(TINY)
    for path, value in changes.items():
        obj = t
        keys = path.split("__")
        for k in keys[:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        last = keys[-1]
        if value is DELETE:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value
    return t


DELETE = object()

EMPTY_TOKEN = copy.deepcopy(TINY)
EMPTY_TOKEN["model"]["vocab"] = dict([("", 24)] + list(TINY["model"]["vocab"].items()))

ERRORS = {
    "no_model": (variant(model=DELETE), "format", 'no "model" object'),
    "model_unigram": (variant(model__type="Unigram"), "unsupported", 'model type "Unigram"'),
    "normalizer_nfkc": (variant(normalizer={"type": "NFKC"}), "unsupported", 'normalizer type "NFKC"'),
    "pretok_whitespace": (variant(pre_tokenizer={"type": "Whitespace"}), "unsupported",
                          'pre_tokenizer type "Whitespace"'),
    "pretok_missing": (variant(pre_tokenizer=None), "unsupported", 'pre_tokenizer type "null"'),
    "decoder_wordpiece": (variant(decoder={"type": "WordPiece"}), "unsupported", 'decoder type "WordPiece"'),
    "post_template": (variant(post_processor={"type": "TemplateProcessing"}), "unsupported",
                      'post_processor type "TemplateProcessing"'),
    "padding_set": (variant(padding={"strategy": "BatchLongest"}), "unsupported", '"padding" is set'),
    "dropout": (variant(model__dropout=0.1), "unsupported", "dropout"),
    "merge_no_space": (variant(model__merges=["b c", "abc"]), "format",
                       'model.merges[1]: expected "left right"'),
    "merge_two_spaces": (variant(model__merges=["a b c"]), "format", "model.merges[0]: expected"),
    "merge_unknown_token": (variant(model__merges=["b c", "a z"]), "format",
                            'model.merges[1]: "z" is not in the vocabulary'),
    "merge_result_missing": (variant(model__merges=["c d"]), "format",
                             'model.merges[0]: "cd" is not in the vocabulary'),
    "merges_not_list": (variant(model__merges="b c"), "format", "model.merges: expected a list"),
    "vocab_not_object": (variant(model__vocab=["a", "b"]), "format", "model.vocab: expected"),
    "vocab_bad_id": (variant(model__vocab={"a": -1}), "format", 'id of "a" is not an integer'),
    "dup_vocab_id": (variant(model__vocab={"a": 1, "b": 1}), "format", "id 1 is given to two tokens"),
    "dup_added_id": (variant(added_tokens__2={"id": 20, "content": "x", "special": False}), "format",
                     "id 20 is given to two added tokens"),
    "added_clashes_vocab": (variant(added_tokens__2={"id": 3, "content": "zz", "special": False}),
                            "format", "id 3 is a different vocabulary token"),
    "added_lstrip": (variant(added_tokens__1={"id": 20, "content": "  ", "lstrip": True}), "unsupported",
                     '"lstrip" is not supported'),
    "added_empty": (variant(added_tokens__1={"id": 20, "content": ""}), "format",
                    '"content" must be a non-empty string'),
    "unk_missing": (variant(model__unk_token="<unk>"), "format", 'unk_token "<unk>" is not in the vocabulary'),
    # found by fuzz/fuzz_tokenizer.c: a 20-token file with an id of 4 million
    # took a token table of 4 million entries
    "vocab_sparse_ids": (variant(**{"model__vocab__!": 4444419}), "format",
                         'id 4444419 (of "!") in a vocabulary of 25 tokens: ids must be nearly dense'),
    "vocab_id_beyond_model": (variant(**{"model__vocab__!": 16777216}), "format",
                              'id of "!" is not an integer in [0, 16777216)'),
}


def write(name, doc, expected, raw=None):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "input.json"), "w") as f:
        f.write(raw if raw is not None else json.dumps(doc, indent=1, ensure_ascii=True) + "\n")
    with open(os.path.join(d, "expected"), "w") as f:
        f.write(expected)


def main():
    for name in os.listdir(ROOT) if os.path.isdir(ROOT) else []:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.rmtree(os.path.join(ROOT, name))

    def ok(rows):
        return "ok\n" + "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows)

    write("tiny", TINY, ok(TINY_ENCODINGS))
    write("tiny_merges_swapped", SWAPPED, ok(SWAPPED_ENCODINGS))
    write("tiny_merges_as_pairs", NEW_MERGES, ok(TINY_ENCODINGS))
    write("tiny_prefix_space", PREFIX, ok(PREFIX_ENCODINGS))
    # found by fuzz/fuzz_tokenizer.c: an empty token first in the vocabulary
    # did arithmetic on a NULL key store; it is a token no text encodes to
    write("vocab_empty_token", EMPTY_TOKEN, ok(TINY_ENCODINGS))
    for name, (doc, code, needle) in ERRORS.items():
        write(name, doc, "%s\t%s\n" % (code, needle))
    write("bad_json", None, "format\tnot valid JSON\n", raw='{"model": {"vocab": {"a": 1,}}\n')
    write("duplicate_key", None, "format\tduplicate object key\n",
          raw='{"model": {"type": "BPE", "vocab": {"a": 0, "a": 1}, "merges": []}}\n')
    write("not_object", None, 'format\tno "model" object\n', raw="[1, 2, 3]\n")


if __name__ == "__main__":
    main()
