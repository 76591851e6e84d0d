/*
 * checkpoint.c - pick a checkpoint directory's format and open it.
 */
#include "workers/model/checkpoint.h"

#include <stdio.h>
#include <sys/stat.h>

#include "workers/model/torchzip.h"

static int present(const char *dir, const char *name)
{
    char path[4096];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return 0;
    return stat(path, &sb) == 0;
}

enum checkpoint_format checkpoint_format(const char *dir)
{
    if (present(dir, "model.safetensors") || present(dir, "model.safetensors.index.json"))
        return CHECKPOINT_SAFETENSORS;
    if (present(dir, TZ_SINGLE_NAME) || present(dir, TZ_INDEX_NAME))
        return CHECKPOINT_TORCHZIP;
    return CHECKPOINT_NONE;
}

int checkpoint_open(struct st_set **out, const char *dir, struct err *e)
{
    *out = NULL;
    switch (checkpoint_format(dir)) {
    case CHECKPOINT_SAFETENSORS:
        return st_set_open(out, dir, e);
    case CHECKPOINT_TORCHZIP:
        return torchzip_set_open(out, dir, e);
    default:
        return err_set(e, ERR_NOTFOUND, dir,
                       "no model.safetensors, model.safetensors.index.json, " TZ_SINGLE_NAME
                       " or " TZ_INDEX_NAME " in %s",
                       dir);
    }
}
