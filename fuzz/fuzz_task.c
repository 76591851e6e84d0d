/*
 * fuzz_task.c - task_load_json (workers/train/task.c) on arbitrary bytes
 * as a toy run's task.json.
 *
 * Checked beyond "no crash": the error contract on failure; on success the
 * task's vocabulary and sequence length are positive, a batch of step 0
 * has every token in [0, vocab) and every target in [-1, vocab), and a
 * modular-addition task's pairs (a, b) are distinct with a, b in [0, p).
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz/fuzz_util.h"
#include "workers/train/task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write("task.json", data, size);
    struct task *t = NULL;
    struct err e;
    int rc = task_load_json(&t, path, &e);
    if (rc < 0) {
        if (t)
            fuzz_fail("task_load_json failed but returned a task");
        fuzz_check_err("task_load_json", rc, &e);
        return 0;
    }
    int V = task_vocab(t), T = task_seq_len(t);
    if (V < 1 || T < 1)
        fuzz_fail("vocab %d, seq_len %d", V, T);
    const int *tok, *tgt;
    int B = 0;
    task_batch(t, 0, &tok, &tgt, &B);
    if (B < 1)
        fuzz_fail("batch of %d", B);
    for (size_t i = 0; i < (size_t)B * (size_t)T; i++)
        if (tok[i] < 0 || tok[i] >= V || tgt[i] < -1 || tgt[i] >= V)
            fuzz_fail("position %zu: token %d, target %d, vocab %d", i, tok[i], tgt[i], V);
    int ntrain = 0, npairs = 0;
    const int *pairs = task_modadd_pairs(t, &ntrain, &npairs);
    if (pairs) {
        int p = task_get_config(t)->p;
        unsigned char *seen = calloc((size_t)p * (size_t)p, 1);
        if (!seen)
            fuzz_fail("out of memory");
        if (ntrain < 1 || ntrain > npairs || npairs != p * p)
            fuzz_fail("%d training pairs of %d, p %d", ntrain, npairs, p);
        for (int i = 0; i < npairs; i++) {
            int a = pairs[2 * i], b = pairs[2 * i + 1];
            if (a < 0 || a >= p || b < 0 || b >= p || seen[a * p + b]++)
                fuzz_fail("pair %d is (%d, %d) with p %d: out of range or repeated", i, a, b, p);
        }
        free(seen);
    }
    task_free(t);
    return 0;
}
