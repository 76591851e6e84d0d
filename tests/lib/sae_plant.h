/*
 * sae_plant.h - a synthetic series of SAE dictionaries with planted
 * features, in the layout the `sae` item writes (SAELens 6's: per site
 * ARTIFACTS/sae/<hook_name>/cfg.json with metadata.hook_name, and
 * sae_weights.safetensors with F32 W_enc [d_in, d_sae], W_dec [d_sae,
 * d_in], b_enc [d_sae], b_dec [d_in]).
 * Header-only (static), for test_battery_sae_match.c, whose `--plant DIR`
 * mode writes the series for tests/daemon_lineage.sh.
 *
 * The series has PLANT_STEPS steps (0, 1000, ..., 6000) and two sites:
 *   blocks.0.hook_resid_post (layer 0): PLANT_BG0 background features
 *     present at every step, and the named features of plant_named[],
 *     each present from `first` to `last` (inclusive):
 *       stable             0 .. 6000
 *       dies               0 .. 2000 (gone from 3000)
 *       born1000, born2000, born3000   from that step to the end
 *       born2000_dies5000  2000 .. 4000 (gone from 5000)
 *       born5000           5000 .. 6000
 *       parent             0 .. 3000; at 4000 it splits into
 *       child_a            4000 .. 6000, cosine 0.9 to parent (continues it)
 *       child_b            4000 .. 6000, cosine 0.78 to parent (a split child)
 *   blocks.1.hook_resid_post (layer 1): PLANT_BG1 features at every step.
 * Every feature has a random base direction (uniform components,
 * normalised; in d_in = 64 two such directions have |cosine| well below
 * 0.7); at each step its decoder row is the base plus fresh noise (cosine
 * about 0.995 to the base) times a random norm in [0.5, 2), and the rows of
 * each step's dictionary are shuffled.  All from fixed splitmix64 seeds.
 *
 * plant_series also writes, per step, STEP/sae_rows.tsv: the `sae` item's
 * rows feature_density = (i+1)/1000 and feature_mean_activation = 1 + i/100
 * for feature i of each site (item version PLANT_SAE_VERSION), and
 * DIR/manifest.tsv: "layer<TAB>name<TAB>step<TAB>feature" for every named
 * feature at every step it is present.
 */
#ifndef CKPTD_TESTS_SAE_PLANT_H
#define CKPTD_TESTS_SAE_PLANT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/path.h"
#include "common/rng.h"
#include "workers/model/safetensors.h"

#define PLANT_STEPS 7
#define PLANT_STEP(k) (1000LL * (k))
#define PLANT_DIN 64
#define PLANT_BG0 24
#define PLANT_BG1 16
#define PLANT_NOISE 0.022f /* per component; cosine about 0.995 to the base */
#define PLANT_SAE_VERSION 1

struct plant_named {
    const char *name;
    long long first, last; /* steps present, inclusive */
    int parent;            /* index in plant_named of the feature it splits from, or -1 */
    double cos_parent;
};

static const struct plant_named plant_named[] = {
    {"stable", 0, 6000, -1, 0},
    {"dies", 0, 2000, -1, 0},
    {"born1000", 1000, 6000, -1, 0},
    {"born2000", 2000, 6000, -1, 0},
    {"born3000", 3000, 6000, -1, 0},
    {"born2000_dies5000", 2000, 4000, -1, 0},
    {"born5000", 5000, 6000, -1, 0},
    {"parent", 0, 3000, -1, 0},
    {"child_a", 4000, 6000, 7, 0.9},
    {"child_b", 4000, 6000, 7, 0.78},
};
#define PLANT_NNAMED ((int)(sizeof plant_named / sizeof *plant_named))

/* Where each named feature sits: idx[k][n] in step k's layer-0 dictionary,
 * or -1 when absent; d_sae of each step's layer-0 dictionary. */
struct plant_map {
    int idx[PLANT_STEPS][PLANT_NNAMED];
    int d_sae0[PLANT_STEPS];
};

static inline int plant_find(const char *name)
{
    for (int n = 0; n < PLANT_NNAMED; n++)
        if (strcmp(plant_named[n].name, name) == 0)
            return n;
    return -1;
}

static inline void plant_unit(float *v, int d)
{
    double ss = 0;
    for (int k = 0; k < d; k++)
        ss += (double)v[k] * v[k];
    for (int k = 0; k < d; k++)
        v[k] = (float)(v[k] / sqrt(ss));
}

static inline void plant_random_unit(uint64_t *s, float *v, int d)
{
    for (int k = 0; k < d; k++)
        v[k] = rng_symmetric(s);
    plant_unit(v, d);
}

/* Write one site of a dictionary: dec (n, d) rows. */
static inline int plant_write_site(const char *artifacts, const char *hook, int layer, int n, int d,
                                   const float *dec, struct err *e)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/sae/%s", artifacts, hook);
    int rc = path_mkdir_p(dir, e);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot write");
    (void)layer; /* SAELens 6 has no hook_layer: the layer is blocks.N of the hook */
    fprintf(f, "{\"d_in\": %d, \"d_sae\": %d, \"dtype\": \"float32\", \"device\": \"cpu\","
               " \"apply_b_dec_to_input\": true, \"normalize_activations\": \"none\","
               " \"reshape_activations\": \"none\", \"metadata\": {\"sae_lens_version\":"
               " \"6.18.0\", \"hook_name\": \"%s\"}, \"architecture\": \"standard\"}\n",
            d, n, hook);
    if (fclose(f) != 0)
        return err_set(e, ERR_IO, path, "cannot write");
    float *enc = malloc((size_t)n * d * sizeof *enc), *zeros = calloc((size_t)(n > d ? n : d), sizeof *zeros);
    if (!enc || !zeros) {
        free(enc);
        free(zeros);
        return err_set(e, ERR_NOMEM, path, "out of memory");
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < d; k++)
            enc[(size_t)k * n + i] = dec[(size_t)i * d + k];
    struct st_write_tensor t[4] = {
        {"W_enc", ST_F32, 2, {d, n}, enc},
        {"W_dec", ST_F32, 2, {n, d}, dec},
        {"b_enc", ST_F32, 1, {n}, zeros},
        {"b_dec", ST_F32, 1, {d}, zeros},
    };
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", dir);
    rc = st_write(path, t, 4, NULL, e);
    free(enc);
    free(zeros);
    return rc;
}

/* Rows of dictionary `bases` (nf, d) at one step: noisy, scaled copies in
 * the order perm (nf) gives, rows[perm[f]] = copy of base f. */
static inline void plant_copies(uint64_t *s, const float *bases, int nf, int d, const int *perm,
                                float *rows)
{
    for (int f = 0; f < nf; f++) {
        float *r = rows + (size_t)perm[f] * d;
        for (int k = 0; k < d; k++)
            r[k] = bases[(size_t)f * d + k] + PLANT_NOISE * rng_symmetric(s);
        plant_unit(r, d);
        float scale = 0.5f + 0.75f * (rng_symmetric(s) + 1.0f);
        for (int k = 0; k < d; k++)
            r[k] *= scale;
    }
}

static inline void plant_shuffle(uint64_t *s, int *perm, int n)
{
    for (int i = 0; i < n; i++)
        perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(s, (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

static inline int plant_write_rows(const char *stepdir, const int *d_sae, const int *layers, int nsites,
                                   struct err *e)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/sae_rows.tsv", stepdir);
    FILE *f = fopen(path, "w");
    if (!f)
        return err_set(e, ERR_IO, path, "cannot write");
    for (int s = 0; s < nsites; s++)
        for (int i = 0; i < d_sae[s]; i++)
            fprintf(f, "sae\t%d\tfeature_density\t%d\t-1\t%d\t%.17g\n"
                       "sae\t%d\tfeature_mean_activation\t%d\t-1\t%d\t%.17g\n",
                    PLANT_SAE_VERSION, layers[s], i, (i + 1) / 1000.0, PLANT_SAE_VERSION, layers[s], i,
                    1.0 + i / 100.0);
    return fclose(f) == 0 ? 0 : err_set(e, ERR_IO, path, "cannot write");
}

/* Write the series under root (root/step<N>/sae/..., sae_rows.tsv,
 * root/manifest.tsv) and fill *map.  0 or a negative code. */
static inline int plant_series(const char *root, struct plant_map *map, struct err *e)
{
    const int D = PLANT_DIN, NB0 = PLANT_BG0, NB1 = PLANT_BG1, NF0 = NB0 + PLANT_NNAMED;
    float *base0 = malloc((size_t)NF0 * D * sizeof *base0), *base1 = malloc((size_t)NB1 * D * sizeof *base1);
    float *rows = malloc((size_t)(NF0 > NB1 ? NF0 : NB1) * D * sizeof *rows);
    float *present = malloc((size_t)NF0 * D * sizeof *present);
    int perm[NB0 + PLANT_NNAMED + PLANT_BG1], rc = path_mkdir_p(root, e);
    FILE *man = NULL;
    char path[4200];
    if (rc == 0 && (!base0 || !base1 || !rows || !present))
        rc = err_set(e, ERR_NOMEM, root, "out of memory");
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/manifest.tsv", root);
        if (!(man = fopen(path, "w")))
            rc = err_set(e, ERR_IO, path, "cannot write");
    }
    if (rc < 0)
        goto out;
    uint64_t s = 0x5341455f504c414eull; /* "SAE_PLAN" */
    for (int f = 0; f < NF0; f++)
        plant_random_unit(&s, base0 + (size_t)f * D, D);
    for (int f = 0; f < NB1; f++)
        plant_random_unit(&s, base1 + (size_t)f * D, D);
    /* split children: a rotation of the parent's base by a fresh orthogonal direction */
    for (int n = 0; n < PLANT_NNAMED; n++) {
        if (plant_named[n].parent < 0)
            continue;
        const float *p = base0 + (size_t)(NB0 + plant_named[n].parent) * D;
        float *c = base0 + (size_t)(NB0 + n) * D, q[PLANT_DIN];
        plant_random_unit(&s, q, D);
        double dot = 0;
        for (int k = 0; k < D; k++)
            dot += (double)q[k] * p[k];
        for (int k = 0; k < D; k++)
            q[k] = (float)(q[k] - dot * p[k]);
        plant_unit(q, D);
        double a = plant_named[n].cos_parent, b = sqrt(1 - a * a);
        for (int k = 0; k < D; k++)
            c[k] = (float)(a * p[k] + b * q[k]);
        plant_unit(c, D);
    }
    for (int k = 0; k < PLANT_STEPS && rc == 0; k++) {
        long long step = PLANT_STEP(k);
        char stepdir[2048];
        snprintf(stepdir, sizeof stepdir, "%s/step%lld", root, step);
        /* layer 0: the background and the named features present now */
        int nf = 0, which[NB0 + PLANT_NNAMED];
        for (int f = 0; f < NF0; f++) {
            int n = f - NB0;
            if (n < 0 || (plant_named[n].first <= step && step <= plant_named[n].last)) {
                memcpy(present + (size_t)nf * D, base0 + (size_t)f * D, (size_t)D * sizeof *present);
                which[nf++] = f;
            }
        }
        plant_shuffle(&s, perm, nf);
        plant_copies(&s, present, nf, D, perm, rows);
        for (int n = 0; n < PLANT_NNAMED; n++)
            map->idx[k][n] = -1;
        for (int i = 0; i < nf; i++)
            if (which[i] >= NB0) {
                int n = which[i] - NB0;
                map->idx[k][n] = perm[i];
                fprintf(man, "0\t%s\t%lld\t%d\n", plant_named[n].name, step, perm[i]);
            }
        map->d_sae0[k] = nf;
        if ((rc = plant_write_site(stepdir, "blocks.0.hook_resid_post", 0, nf, D, rows, e)) < 0)
            break;
        /* layer 1: the same features throughout */
        plant_shuffle(&s, perm, NB1);
        plant_copies(&s, base1, NB1, D, perm, rows);
        if ((rc = plant_write_site(stepdir, "blocks.1.hook_resid_post", 1, NB1, D, rows, e)) < 0)
            break;
        int dsae[2] = {nf, NB1}, layers[2] = {0, 1};
        rc = plant_write_rows(stepdir, dsae, layers, 2, e);
    }
out:
    if (man && fclose(man) != 0 && rc == 0)
        rc = err_set(e, ERR_IO, root, "cannot write manifest.tsv");
    free(present);
    free(rows);
    free(base1);
    free(base0);
    return rc;
}

#endif
