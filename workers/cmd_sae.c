/* ckpt-worker sae: what an SAE dictionary directory holds, as ckptd reads
 * it (workers/battery/sae_file.h), and its codes and reconstructions of
 * given activations.  ckptd add-run checks a --sae dictionary with it; the
 * tests compare its numbers with an independent reading of the files. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/log.h"
#include "common/path.h"
#include "workers/battery/sae.h"
#include "workers/battery/sae_file.h"
#include "workers/cli.h"
#include "workers/model/npy.h"

static const char sae_usage[] =
    "usage: ckpt-worker sae DIR [--json]\n"
    "       ckpt-worker sae DIR --encode FILE.npy --out OUTDIR\n"
    "\n"
    "Reads the SAE dictionary in DIR: a SAELens 6 or pre-6.0 directory (cfg.json,\n"
    "sae_weights.safetensors) or a sparsify hookpoint folder (cfg.json,\n"
    "sae.safetensors), and prints what it is: format, architecture, d_in, d_sae, k,\n"
    "dtype, hook, model.  --json prints one JSON object with those keys.\n"
    "  --encode FILE.npy   float32 activations [..., d_in]: write OUTDIR/feature_acts.npy\n"
    "                      [n, d_sae] (the codes) and OUTDIR/reconstruction.npy [n, d_in]\n"
    "                      for the n rows\n"
    "  --out OUTDIR        where --encode writes (created if needed)\n"
    "Exit status: 0 ok, 1 the dictionary or activations could not be read, 2 usage.\n";

static json_t *info_json(const struct sae *s, const struct sae_info *in)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "format", json_string(sae_format_name(in->format)));
    json_object_set_new(o, "architecture", json_string(sae_arch_name(s->arch)));
    json_object_set_new(o, "d_in", json_integer(s->d_in));
    json_object_set_new(o, "d_sae", json_integer(s->d_sae));
    json_object_set_new(o, "k", s->arch == SAE_TOPK ? json_integer(s->k) : json_null());
    json_object_set_new(o, "apply_b_dec_to_input", json_boolean(s->apply_b_dec));
    json_object_set_new(o, "dtype", json_string(in->dtype));
    json_object_set_new(o, "hook_name", in->hook_name[0] ? json_string(in->hook_name) : json_null());
    json_object_set_new(o, "model_name",
                        in->model_name[0] ? json_string(in->model_name) : json_null());
    json_object_set_new(o, "sae_lens_version", in->version[0] ? json_string(in->version) : json_null());
    json_object_set_new(o, "hook_z", json_boolean(in->hook_z));
    json_object_set_new(o, "decoder_norm_folded", json_boolean(in->rescaled));
    json_object_set_new(o, "activation_scaler", in->scaler > 0 ? json_real(in->scaler) : json_null());
    return o;
}

/* The codes and reconstructions of the rows of npy_in into outdir. */
static int encode_file(const struct sae *s, const char *npy_in, const char *outdir, struct err *e)
{
    float *x = NULL, *z = NULL, *xh = NULL;
    int ndim = 0, shape[NPY_MAX_DIMS];
    char path[4096];
    int rc = npy_read_f32(npy_in, &x, &ndim, shape, e);
    if (rc < 0)
        return rc;
    size_t n = 1;
    for (int d = 0; d + 1 < ndim; d++)
        n *= (size_t)shape[d];
    if (ndim < 1 || shape[ndim - 1] != s->d_in) {
        rc = err_set(e, ERR_MISMATCH, npy_in, "the last dimension is %d; the dictionary's d_in is %d",
                     ndim ? shape[ndim - 1] : 0, s->d_in);
        goto out;
    }
    z = malloc((n ? n : 1) * (size_t)s->d_sae * sizeof *z);
    xh = malloc((n ? n : 1) * (size_t)s->d_in * sizeof *xh);
    if (!z || !xh) {
        rc = err_set(e, ERR_NOMEM, npy_in, "out of memory for %zu rows", n);
        goto out;
    }
    if ((rc = sae_reconstruct(s, xh, z, x, n, e)) < 0 || (rc = path_mkdir_p(outdir, e)) < 0)
        goto out;
    int zs[2] = {(int)n, s->d_sae}, xs[2] = {(int)n, s->d_in};
    snprintf(path, sizeof path, "%s/feature_acts.npy", outdir);
    if ((rc = npy_write_f32(path, z, 2, zs, e)) < 0)
        goto out;
    snprintf(path, sizeof path, "%s/reconstruction.npy", outdir);
    rc = npy_write_f32(path, xh, 2, xs, e);
out:
    free(x);
    free(z);
    free(xh);
    return rc;
}

int cmd_sae(int argc, char **argv)
{
    const char *dir = NULL, *enc = NULL, *outdir = NULL;
    int as_json = 0;
    enum { O_HELP = 256, O_JSON, O_ENCODE, O_OUT };
    static const struct option opts[] = {
        {"help", no_argument, NULL, O_HELP},
        {"json", no_argument, NULL, O_JSON},
        {"encode", required_argument, NULL, O_ENCODE},
        {"out", required_argument, NULL, O_OUT},
        {NULL, 0, NULL, 0},
    };
    struct args c;
    args_start(&c, argc, argv, "", opts);
    for (int k; (k = args_next(&c)) != ARGS_END;) {
        if (k == O_HELP) {
            fputs(sae_usage, stdout);
            return 0;
        } else if (k == O_JSON) {
            as_json = 1;
        } else if (k == O_ENCODE) {
            enc = c.arg;
        } else if (k == O_OUT) {
            outdir = c.arg;
        } else if (k == ARGS_WORD && !dir) {
            dir = c.arg;
        } else {
            fprintf(stderr, "ckpt-worker sae: unexpected argument '%s'\n%s", c.word, sae_usage);
            return EXIT_USAGE;
        }
    }
    if (!dir || (!enc != !outdir)) {
        fputs(sae_usage, stderr);
        return EXIT_USAGE;
    }
    struct err e;
    err_clear(&e);
    struct sae *s = NULL;
    struct sae_info info;
    int status = EXIT_INPUT;
    if (sae_load(&s, dir, &info, &e) < 0)
        goto fail;
    if (enc) {
        if (encode_file(s, enc, outdir, &e) < 0)
            goto fail;
    } else if (as_json) {
        json_t *o = info_json(s, &info);
        char *text = o ? json_dumps(o, JSON_PRESERVE_ORDER | JSON_COMPACT) : NULL;
        json_decref(o);
        if (!text) {
            err_set(&e, ERR_NOMEM, dir, "out of memory");
            goto fail;
        }
        puts(text);
        free(text);
    } else {
        printf("format        %s%s%s\n", sae_format_name(info.format),
               info.version[0] ? " " : "", info.version);
        printf("architecture  %s", sae_arch_name(s->arch));
        if (s->arch == SAE_TOPK)
            printf(" (k %d)", s->k);
        printf("\nd_in          %d\nd_sae         %d\ndtype         %s\n", s->d_in, s->d_sae,
               info.dtype);
        printf("hook          %s\nmodel         %s\n", info.hook_name[0] ? info.hook_name : "-",
               info.model_name[0] ? info.model_name : "-");
        printf("b_dec applied %s\n", s->apply_b_dec ? "yes" : "no");
        if (info.rescaled)
            printf("folded        decoder row norms (rescale_acts_by_decoder_norm)\n");
        if (info.scaler > 0)
            printf("folded        activation scaler %.9g\n", info.scaler);
    }
    if (fflush(stdout) != 0) {
        err_set(&e, ERR_IO, "stdout", "write failed");
        goto fail;
    }
    status = 0;
    goto out;
fail:
    log_err("sae failed", &e);
out:
    sae_free(s);
    return status;
}
