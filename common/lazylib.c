#include "common/lazylib.h"

#include <dlfcn.h>

int lazylib_load(struct lazylib *l, const char *soname, const struct lazylib_sym *syms, int n,
                 struct err *e)
{
    pthread_mutex_lock(&l->lock);
    int rc = 0;
    if (!l->loaded) {
        void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
        const char *missing = NULL;
        for (int i = 0; lib && !missing && i < n; i++)
            if (!(*syms[i].slot = dlsym(lib, syms[i].name)))
                missing = syms[i].name;
        if (!lib || missing) {
            const char *why = dlerror();
            rc = err_set(e, ERR_UNSUPPORTED, soname, "cannot load%s%s: %s", missing ? " function " : "",
                         missing ? missing : "", why ? why : "unknown");
            if (lib)
                dlclose(lib);
        } else {
            l->loaded = 1;
        }
    }
    pthread_mutex_unlock(&l->lock);
    return rc;
}
