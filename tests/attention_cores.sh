#!/bin/sh
# attention_cores.sh - the attention and the forward under OpenBLAS's other
# kernel families: test_attention (fused and materialised attention against
# double, bit-identical with 1 and 2 threads) and test_gptneox (the golden
# fixtures, every TransformerLens hook) with OPENBLAS_CORETYPE set to each of
# Haswell, SkylakeX, Sandybridge and Prescott.  A family this CPU cannot run
# is skipped (OpenBLAS falls back to a lesser one on its own, but the run
# would then test nothing new).  Run from the repository root after the
# tests are built.
set -u
B=${BUILD:-build}
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
fails=0
n=0
for core in Prescott Sandybridge Haswell SkylakeX; do
    case $core in
    SkylakeX) need=avx512f ;;
    Haswell) need=avx2 ;;
    Sandybridge) need=avx ;;
    *) need=sse2 ;;
    esac
    case " $flags " in
    *" $need "*) ;;
    *) echo "skip: $core (this CPU has no $need)"; continue ;;
    esac
    for t in test_attention test_gptneox; do
        n=$((n + 1))
        if out=$(env OPENBLAS_CORETYPE=$core CKPTD_BLAS_AUTO=0 "$B/tests/$t" 2>&1); then
            echo "ok: $t with OPENBLAS_CORETYPE=$core"
            printf '%s\n' "$out" | grep -E '^\[ (attention|gptneox) \] .*B=' | sed 's/^/    /'
        else
            echo "FAIL: $t with OPENBLAS_CORETYPE=$core"
            printf '%s\n' "$out" | tail -15
            fails=$((fails + 1))
        fi
    done
done
echo "attention_cores: $((n - fails)) of $n passed"
[ "$fails" -eq 0 ]
