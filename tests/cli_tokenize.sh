#!/bin/sh
# cli_tokenize.sh - `ckpt-worker tokenize` and `detokenize` from the
# outside, with GPT-NeoX-20B's tokenizer (scripts/fetch-tokenizer): every
# output format holds the same ids and decodes back to the text; exit
# statuses 1/2 for bad input/usage; and the default eval corpus
# (scripts/fetch-corpus) tokenizes, decodes back to eval.txt byte for
# byte, is cached, and its eval.u16 is read by `analyze --eval-tokens
# --ctx` on a Pythia-shaped model.  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
DATA=${CKPTD_DATA:-var/data}
TMP=$(mktemp -d /tmp/ckptd-cli-tokenize-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# status WANT NAME -- command...: run (stdout to $TMP/out, stderr to
# $TMP/err) and check the exit status
status() {
    want=$1 name=$2
    shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    got=$?
    if [ "$got" -eq "$want" ]; then ok "$name (exit $got)"; else
        fail "$name: exit $got, want $want"; tail -3 "$TMP/err"; fi
}
# has FILE NEEDLE: FILE contains NEEDLE
has() { grep -qF -- "$2" "$1" && ok "message: $2" || { fail "no '$2' in: $(cat "$1")"; }; }

scripts/fetch-tokenizer "$DATA" || { echo "cli_tokenize: cannot get the tokenizer"; exit 1; }
T=$DATA/20B_tokenizer.json

status 0 "tokenize --help" -- "$W" tokenize --help
has "$TMP/out" "usage: ckpt-worker tokenize"
status 0 "detokenize --help" -- "$W" detokenize --help
status 2 "tokenize without --tokenizer" -- "$W" tokenize --text hi
has "$TMP/err" "--tokenizer FILE is required"
status 2 "tokenize --out .txt" -- "$W" tokenize --tokenizer "$T" --text hi --out "$TMP/x.txt"
has "$TMP/err" "must be .u16, .u32, .npy or .json"
status 2 "tokenize --in and --text" -- "$W" tokenize --tokenizer "$T" --text hi --in "$TMP/x"
status 2 "tokenize unknown option" -- "$W" tokenize --tokenizer "$T" --frob
status 2 "detokenize without --tokenizer" -- "$W" detokenize
status 1 "missing tokenizer file" -- "$W" tokenize --tokenizer "$TMP/none.json" --text hi
has "$TMP/err" "cannot open"
echo '{"model": {"type": "WordPiece"}}' >"$TMP/wp.json"
status 1 "unsupported tokenizer" -- "$W" tokenize --tokenizer "$TMP/wp.json" --text hi
has "$TMP/err" 'model type \"WordPiece\"'
status 1 "missing input" -- "$W" tokenize --tokenizer "$T" --in "$TMP/none.txt"
printf 'ok\377bad' >"$TMP/bad.txt"
status 1 "invalid UTF-8" -- "$W" tokenize --tokenizer "$T" --in "$TMP/bad.txt" --out "$TMP/bad.u16"
has "$TMP/err" "not valid UTF-8 (byte offset 2)"
[ ! -e "$TMP/bad.u16" ] && ok "nothing written on failure" || fail "bad.u16 written"

# one text, every format: the same ids, and the text back
printf 'Hello,  world!\n\tcaf\303\251 <|endoftext|> 12345 \360\237\230\200\n' >"$TMP/in.txt"
status 0 "tokenize to stdout" -- "$W" tokenize --tokenizer "$T" --in "$TMP/in.txt"
cp "$TMP/out" "$TMP/ids.txt"
[ "$(wc -l <"$TMP/ids.txt")" -eq 1 ] && grep -Eq '^[0-9]+( [0-9]+)+$' "$TMP/ids.txt" &&
    ok "ids on one line" || fail "stdout ids: $(cat "$TMP/ids.txt")"
grep -Eq '(^| )0( |$)' "$TMP/ids.txt" && ok "<|endoftext|> is id 0" || fail "no id 0 for <|endoftext|>"
"$W" tokenize --tokenizer "$T" <"$TMP/in.txt" >"$TMP/stdin_ids.txt" 2>"$TMP/err"
cmp -s "$TMP/stdin_ids.txt" "$TMP/ids.txt" && ok "stdin gives the same ids" || fail "stdin ids differ"
for ext in u16 u32 npy json; do
    status 0 "tokenize --out .$ext" -- "$W" tokenize --tokenizer "$T" --in "$TMP/in.txt" --out "$TMP/ids.$ext"
    python3 - "$TMP/ids.$ext" "$ext" "$TMP/ids.txt" <<'EOF' && ok ".$ext holds the ids" || fail ".$ext ids differ"
import json, struct, sys
path, ext, ref = sys.argv[1:]
data = open(path, "rb").read()
want = [int(x) for x in open(ref).read().split()]
if ext == "u16":
    got = list(struct.unpack("<%dH" % (len(data) // 2), data))
elif ext == "u32":
    got = list(struct.unpack("<%dI" % (len(data) // 4), data))
elif ext == "json":
    got = json.loads(data)
else:
    assert data[:6] == b"\x93NUMPY" and data[6] == 1
    hlen = data[8] | data[9] << 8
    hdr = data[10:10 + hlen].decode()
    assert "'descr': '<i4'" in hdr and "'shape': (%d,)" % len(want) in hdr, hdr
    assert (10 + hlen) % 64 == 0
    body = data[10 + hlen:]
    got = list(struct.unpack("<%di" % (len(body) // 4), body))
sys.exit(0 if got == want else 1)
EOF
    status 0 "detokenize .$ext" -- "$W" detokenize --tokenizer "$T" --in "$TMP/ids.$ext"
    cmp -s "$TMP/out" "$TMP/in.txt" && ok ".$ext decodes to the text" || fail ".$ext decodes to: $(cat "$TMP/out")"
done
"$W" detokenize --tokenizer "$T" <"$TMP/ids.txt" >"$TMP/out" 2>"$TMP/err"
cmp -s "$TMP/out" "$TMP/in.txt" && ok "detokenize from stdin" || fail "stdin decode: $(cat "$TMP/out")"

# detokenize errors; a cut multi-byte character becomes U+FFFD
echo "12092 99999" >"$TMP/oov.txt"
status 1 "id outside the vocabulary" -- "$W" detokenize --tokenizer "$T" --in "$TMP/oov.txt"
has "$TMP/err" "token id 99999 at position 1"
echo "12092 x7" >"$TMP/junk.txt"
status 1 "not an id" -- "$W" detokenize --tokenizer "$T" --in "$TMP/junk.txt"
has "$TMP/err" "is not a token id"
echo '[1, "a"]' >"$TMP/junk.json"
status 1 "JSON item not an id" -- "$W" detokenize --tokenizer "$T" --in "$TMP/junk.json"
"$W" tokenize --tokenizer "$T" --text "$(printf '\360\237\230\200')" >"$TMP/emoji.txt" 2>"$TMP/err"
cut -d' ' -f1 "$TMP/emoji.txt" >"$TMP/first.txt"
status 0 "detokenize a partial character" -- "$W" detokenize --tokenizer "$T" --in "$TMP/first.txt"
[ "$(od -An -tx1 "$TMP/out" | tr -d ' \n')" = "efbfbd" ] && ok "partial character is U+FFFD" ||
    fail "partial character decodes to $(od -An -tx1 "$TMP/out")"
# an id beyond uint16 cannot be stored as .u16 (a tokenizer with one; ids
# must be nearly dense, so 35,000 filler tokens below it)
python3 - "$TMP/big.json" <<'EOF'
import json, sys
vocab = {"a": 0, "b": 70000}
vocab.update({"<f%d>" % i: i for i in range(1, 35001)})
json.dump({"model": {"type": "BPE", "vocab": vocab, "merges": []},
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
           "decoder": {"type": "ByteLevel"}}, open(sys.argv[1], "w"))
EOF
status 1 "id >= 65536 to .u16" -- "$W" tokenize --tokenizer "$TMP/big.json" --text ab --out "$TMP/big.u16"
has "$TMP/err" "token id 70000 (position 1) does not fit in uint16"
status 0 "id >= 65536 to .u32" -- "$W" tokenize --tokenizer "$TMP/big.json" --text ab --out "$TMP/big.u32"

# the default eval corpus, built in a scratch directory (the tokenizer is
# copied there, so nothing is downloaded)
mkdir -p "$TMP/data"
cp "$T" "$TMP/data/"
status 0 "fetch-corpus" -- env CKPT_WORKER="$W" scripts/fetch-corpus "$TMP/data"
E=$TMP/data
bytes=$(wc -c <"$E/eval.txt") ntok=$(($(wc -c <"$E/eval.u16") / 2))
[ "$bytes" -gt 1000000 ] && [ "$ntok" -gt 200000 ] && ok "eval.txt $bytes bytes, eval.u16 $ntok tokens" ||
    fail "eval corpus too small: $bytes bytes, $ntok tokens"
status 0 "detokenize eval.u16" -- "$W" detokenize --tokenizer "$T" --in "$E/eval.u16"
cmp -s "$TMP/out" "$E/eval.txt" && ok "eval.u16 decodes to eval.txt exactly" || fail "eval.u16 does not decode to eval.txt"
before=$(stat -c %Y.%s "$E/eval.u16")
sleep 1
status 0 "fetch-corpus again" -- env CKPT_WORKER="$W" scripts/fetch-corpus "$TMP/data"
[ "$(stat -c %Y.%s "$E/eval.u16")" = "$before" ] && ok "cached: eval.u16 not rewritten" || fail "eval.u16 rewritten"
touch "$E/eval.txt"
status 0 "fetch-corpus after eval.txt changed" -- env CKPT_WORKER="$W" scripts/fetch-corpus "$TMP/data"
[ "$E/eval.u16" -nt "$E/eval.txt" ] && ok "eval.u16 remade when older than eval.txt" || fail "eval.u16 not remade"

# its first 2048 tokens through analyze --ctx 64: 32 sequences of a
# Pythia-shaped (50304-token) random model; loss near ln(50304) = 10.83
head -c 4096 "$E/eval.u16" >"$TMP/head.u16"
status 0 "init pythia-14m" -- "$W" init "$TMP/m14" --preset pythia-14m --dtype bf16
status 0 "analyze --eval-tokens eval.u16 --ctx 64" -- "$W" analyze "$TMP/m14" --items loss \
    --eval-tokens "$TMP/head.u16" --ctx 64
awk -F'\t' '$3 == "loss" { n++; if ($7 > 9 && $7 < 13) good++ }
            $3 == "loss_by_pos" { p++ }
            END { exit !(n == 1 && good == 1 && p == 63) }' "$TMP/out" &&
    ok "one loss row in (9, 13) and 63 loss_by_pos rows" || fail "analyze rows: $(head -3 "$TMP/out")"

[ "$fails" -eq 0 ] || { echo "cli_tokenize: $fails failed"; exit 1; }
echo "cli_tokenize: all passed"
