#!/bin/sh
# cli_torchzip.sh - ckpt-worker on PyTorch zip checkpoints (pytorch_model.bin):
# inspect and forward read them like safetensors, and a malicious or broken
# file is exit 1 with the reader's message.  Run from the repository root.
set -u
W=${CKPT_WORKER:-build/bin/ckpt-worker}
G=tests/golden/torchzip
CASES=tests/cases/torchzip
TMP=$(mktemp -d /tmp/ckptd-clitz-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
n=0

# expect STATUS NEEDLE -- command...: exit status and a substring of stdout+stderr
expect() {
    want=$1 needle=$2
    shift 3
    n=$((n + 1))
    out=$("$@" 2>&1)
    got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: exit $got (want $want): $*"; echo "$out" | tail -5; fails=$((fails + 1)); return
    fi
    if [ -n "$needle" ] && ! printf '%s' "$out" | grep -qF -- "$needle"; then
        echo "FAIL: output lacks '$needle': $*"; echo "$out" | tail -5; fails=$((fails + 1)); return
    fi
    echo "ok: $*"
}

for d in bin_f32_p2 bin_f16_p4 bin_sharded; do
    expect 0 "problems: 0" -- "$W" inspect "$G/$d"
done
expect 0 "PyTorch zip" -- "$W" inspect "$G/bin_f32_p2"
expect 0 "files: 2" -- "$W" inspect "$G/bin_sharded"
expect 0 "(ignored: old export)" -- "$W" inspect "$G/bin_f32_p2"

# forward: the same losses from either format
a=$("$W" forward "$G/bin_f32_p2" --tokens "$G/st_f32/tokens.json" 2>&1)
b=$("$W" forward "$G/st_f32" --tokens "$G/st_f32/tokens.json" 2>&1)
n=$((n + 1))
if [ -n "$a" ] && [ "$a" = "$b" ] && printf '%s' "$a" | grep -q "mean loss"; then
    echo "ok: forward losses equal (bin vs safetensors)"
else
    echo "FAIL: forward differs: [$a] vs [$b]"; fails=$((fails + 1))
fi

# malicious and broken files in a checkpoint directory: exit 1, the message
bad() { # CASE NEEDLE
    mkdir -p "$TMP/$1"
    cp "$G/st_f32/config.json" "$TMP/$1/"
    cp "$CASES/$1/input.bin" "$TMP/$1/pytorch_model.bin"
    expect 1 "$2" -- "$W" inspect "$TMP/$1"
    expect 1 "$2" -- "$W" forward "$TMP/$1" --tokens "$G/st_f32/tokens.json"
}
bad global_os_system "refusing GLOBAL os.system"
bad stack_global_eval "refusing STACK_GLOBAL builtins.eval"
bad opcode_unknown "opcode unknown (0xff)"
bad reduce_storage_class "REDUCE calls torch.FloatStorage"
bad missing_record "which is not in the archive"
bad truncated_pkl "data.pkl is truncated"
bad short_record "holds 8 bytes, but its persistent id declares 6 elements"
bad noncontiguous "are not contiguous"
bad legacy_format "legacy torch.save format"
bad crc_mismatch "fails its CRC-32 check"

# a shard index naming a missing shard
mkdir -p "$TMP/shard"
cp "$G/bin_sharded/config.json" "$G/bin_sharded/pytorch_model.bin.index.json" \
    "$G/bin_sharded/pytorch_model-00001-of-00002.bin" "$TMP/shard/"
expect 1 "pytorch_model-00002-of-00002.bin" -- "$W" inspect "$TMP/shard"

# nothing at all
mkdir -p "$TMP/empty"
expect 1 "pytorch_model.bin.index.json" -- "$W" inspect "$TMP/empty"

# libzip (and the libcrypto it brings) is loaded at the first torch zip,
# not at the worker's start: the loader's list of what it loaded
loaded() { # CKPT_DIR: the libraries a worker's inspect loads, one line
    LD_DEBUG=files "$W" inspect "$1" 2>&1 >/dev/null | sed -n 's/.*file=\([^ ]*\) \[0\];  needed by.*/\1/p
        s/.*file=\([^ ]*\) \[0\];  dynamically loaded by.*/\1/p' | sort -u | tr '\n' ' '
}
n=$((n + 1))
st=$(loaded "$G/st_f32")
case "$st" in
    *libzip*|*libcrypto*) echo "FAIL: a safetensors checkpoint loads libzip or libcrypto: $st"; fails=$((fails + 1)) ;;
    *libc.so*) echo "ok: a safetensors checkpoint: neither libzip nor libcrypto loaded" ;;
    *) echo "FAIL: LD_DEBUG=files lists no libc: [$st]"; fails=$((fails + 1)) ;;
esac
n=$((n + 1))
case "$(loaded "$G/bin_f32_p2")" in
    *libzip*) echo "ok: a torch zip checkpoint: libzip loaded" ;;
    *) echo "FAIL: a torch zip checkpoint read without libzip loaded"; fails=$((fails + 1)) ;;
esac

echo "$((n - fails)) passed, $fails failed"
[ "$fails" -eq 0 ]
