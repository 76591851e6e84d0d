#!/usr/bin/python3
"""check_deploy.py - static and database checks of deploy/, for
tests/deploy_validate.sh.  Prints one "ok: ..." or "FAIL: ..." line per
check; exit status 1 when any failed.

    check_deploy.py k8s DIR SCHEMA CONFIG_OUT
        the manifests in DIR against SCHEMA (k8s_required.json): kinds,
        apiVersions, required fields, one image, the database from the
        Secret (secretKeyRef), probes on the port metrics_listen names,
        volumes behind every path the daemon writes; the ConfigMap's
        ckptd.json is written to CONFIG_OUT for ckptd to load
    check_deploy.py grafana FILE
        the dashboard's structure, then every variable's and panel's SQL
        run with psql (libpq's environment names the database and role):
        variables in order, each taking its first value; Grafana's macros
        replaced; every query must succeed and return rows, time series
        a `time` column, the trend panel a `step` column
    check_deploy.py container FILE ROOT INSTALLED PKGS_OUT
        the container file: Debian 12 bases, COPY sources present in ROOT
        and not excluded by ROOT/.dockerignore, COPY --from=build sources
        present in INSTALLED (a `make install DESTDIR=` tree), a non-root
        USER, the ENTRYPOINT copied; the runtime stage's apt packages are
        written to PKGS_OUT, one a line

Needs python3-yaml for k8s (scripts/install-deps, TEST group).
"""
import csv
import fnmatch
import io
import json
import os
import re
import shlex
import subprocess
import sys

failed = 0


def ok(msg):
    print("ok: " + msg)


def fail(msg):
    global failed
    failed += 1
    print("FAIL: " + msg)


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def get(obj, path):
    """Value at a dotted path, or KeyError."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(path)
        obj = obj[part]
    return obj


def has(obj, path):
    try:
        get(obj, path)
        return True
    except KeyError:
        return False


def gib(q):
    """A Kubernetes quantity (50Gi, 2G, 512Mi) in GiB."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(q))
    if not m:
        return None
    mult = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
            "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]
    return float(m.group(1)) * mult / 2**30


# ---------------------------------------------------------------- k8s

def k8s(d, schema_path, config_out):
    import yaml
    schema = json.load(open(schema_path))
    docs = {}
    for fname, kinds in schema["files"].items():
        path = os.path.join(d, fname)
        try:
            with open(path) as f:
                ds = [x for x in yaml.safe_load_all(f) if x is not None]
        except (OSError, yaml.YAMLError) as e:
            fail("%s: %s" % (fname, e))
            continue
        check([x.get("kind") for x in ds] == kinds, "%s holds %s" % (fname, ", ".join(kinds)))
        docs[fname] = ds
    all_docs = [(f, x) for f, ds in docs.items() for x in ds]

    for fname, doc in all_docs:
        kind = doc.get("kind")
        spec = schema["kinds"].get(kind)
        if not check(spec is not None, "%s: kind %s is known" % (fname, kind)):
            continue
        check(doc.get("apiVersion") == spec["apiVersion"], "%s: %s apiVersion %s" % (fname, kind, spec["apiVersion"]))
        missing = [p for p in spec["required"] if not has(doc, p)]
        check(not missing, "%s: %s has %s%s" % (fname, kind, ", ".join(spec["required"]),
                                               " (missing %s)" % missing if missing else ""))
        if kind != "Kustomization":
            check(has(doc, "metadata.labels." + schema["label"]) or
                  schema["label"] in doc.get("metadata", {}).get("labels", {}),
                  "%s: labelled %s" % (fname, schema["label"]))
        if "restartPolicy" in spec and has(doc, "spec.template.spec.restartPolicy"):
            check(get(doc, "spec.template.spec.restartPolicy") in spec["restartPolicy"],
                  "%s: restartPolicy one of %s" % (fname, spec["restartPolicy"]))

    # the kustomization's resources exist and are among the checked files
    for fname, doc in all_docs:
        if doc.get("kind") == "Kustomization":
            for r in doc.get("resources", []):
                check(r in docs, "%s: resource %s is a checked manifest" % (fname, r))

    # the config the daemons read
    cms = [x for _, x in all_docs if x.get("kind") == "ConfigMap"]
    cfg = {}
    if check(len(cms) == 1 and "ckptd.json" in cms[0].get("data", {}), "one ConfigMap with ckptd.json"):
        try:
            cfg = json.loads(cms[0]["data"]["ckptd.json"])
            ok("ckptd.json is JSON")
            with open(config_out, "w") as f:
                f.write(cms[0]["data"]["ckptd.json"])
        except ValueError as e:
            fail("ckptd.json: %s" % e)
    cm_name = cms[0]["metadata"]["name"] if cms else None
    listen = cfg.get("metrics_listen", "")
    mport = int(listen.rsplit(":", 1)[1]) if re.fullmatch(r".+:\d+", listen) else None
    check(mport is not None, "the config names a metrics port (metrics_listen %r)" % listen)
    check(listen.startswith("127.") or cfg.get("metrics_allow_remote") is True,
          "a non-loopback metrics_listen comes with metrics_allow_remote")

    secret_keys = set()
    for _, x in all_docs:
        if x.get("kind") == "Secret":
            secret_keys |= set(x.get("stringData", {}).keys()) | set(x.get("data", {}).keys())
            check(x["metadata"]["name"] == schema["database_env"]["secret"],
                  "the example Secret is named %s" % schema["database_env"]["secret"])

    images = set()
    creq = schema["container"]
    for fname, doc in all_docs:
        if doc.get("kind") not in ("Deployment", "Job"):
            continue
        pod = get(doc, "spec.template.spec")
        if doc.get("kind") == "Deployment":
            sel = get(doc, "spec.selector.matchLabels")
            labels = get(doc, "spec.template.metadata.labels")
            check(all(labels.get(k) == v for k, v in sel.items()), "%s: the selector matches the pod's labels" % fname)
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        for v in vols.values():
            if "configMap" in v:
                check(v["configMap"].get("name") == cm_name, "%s: volume %s is the ConfigMap %s" % (fname, v["name"], cm_name))
        for c in pod.get("containers", []):
            where = "%s: container %s" % (fname, c.get("name"))
            missing = [p for p in creq["required"] if not has(c, p)]
            check(not missing, "%s has %s%s" % (where, ", ".join(creq["required"]), " (missing %s)" % missing if missing else ""))
            img = c.get("image", "")
            images.add(img)
            check(re.fullmatch(schema["image"], img) is not None, "%s: image %s is tagged with a version" % (where, img))
            check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True and
                  c.get("securityContext", {}).get("allowPrivilegeEscalation") is False,
                  "%s: read-only root, no privilege escalation" % where)
            env = {e["name"]: e for e in c.get("env", [])}
            for var in schema["database_env"]["vars"]:
                ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
                check(ref.get("name") == schema["database_env"]["secret"] and ref.get("key") in secret_keys,
                      "%s: %s from secretKeyRef %s/%s" % (where, var, ref.get("name"), ref.get("key")))
                check("value" not in env.get(var, {}), "%s: %s has no literal value" % (where, var))
            args = c.get("args", [])
            for ref in re.findall(r"\$\((\w+)\)", " ".join(args)):
                check(ref in env, "%s: $(%s) in args is defined in env" % (where, ref))
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            for m in mounts.values():
                check(m["name"] in vols, "%s: mount %s names a volume" % (where, m["mountPath"]))
            if args == ["migrate"]:
                ok("%s: runs ckptd migrate" % where)
                continue
            if not check("serve" in args, "%s: runs ckptd serve" % where):
                continue
            missing = [p for p in creq["daemon_required"] if not has(c, p)]
            check(not missing, "%s has %s%s" % (where, ", ".join(creq["daemon_required"]),
                                                " (missing %s)" % missing if missing else ""))
            # --config points into the ConfigMap's mount
            if "--config" in args:
                cpath = args[args.index("--config") + 1]
                cdir = os.path.dirname(cpath)
                m = mounts.get(cdir)
                check(m is not None and "configMap" in vols.get(m["name"], {}) and os.path.basename(cpath) == "ckptd.json",
                      "%s: --config %s is the ConfigMap's ckptd.json" % (where, cpath))
            # the probes point at the port metrics_listen names
            ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
            check(mport in ports.values(), "%s: containerPort %s (metrics_listen)" % (where, mport))
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in c:
                    continue
                hg = c[probe].get("httpGet", {})
                port = hg.get("port")
                port = ports.get(port, port)
                check(hg.get("path") == "/healthz" and port == mport,
                      "%s: %s is GET /healthz on port %s" % (where, probe, mport))
            # everything the daemon writes is on a writable volume
            writable = [p for p, m in mounts.items() if not m.get("readOnly")]
            under = lambda path: any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable)
            for key in ("cache_dir", "spool_dir"):
                check(key in cfg and under(cfg[key]), "%s: %s %s is on a writable volume" % (where, key, cfg.get(key)))
            hf = env.get("HF_HOME", {}).get("value")
            check(hf is not None and under(hf), "%s: HF_HOME %s is on a writable volume" % (where, hf))
            # the cache volume holds the cache budget
            for p, m in mounts.items():
                if cfg.get("cache_dir", "").startswith(p.rstrip("/") + "/") or cfg.get("cache_dir") == p:
                    lim = vols[m["name"]].get("emptyDir", {}).get("sizeLimit")
                    if lim is not None:
                        check(gib(lim) is not None and gib(lim) >= cfg.get("cache_budget_gb", 0),
                              "%s: cache volume %s holds cache_budget_gb %s" % (where, lim, cfg.get("cache_budget_gb")))
            grace = pod.get("terminationGracePeriodSeconds", 30)
            check(grace > cfg.get("shutdown_grace_s", 30),
                  "%s: terminationGracePeriodSeconds %s > shutdown_grace_s %s" % (where, grace, cfg.get("shutdown_grace_s", 30)))
            if doc.get("kind") == "Job":
                s = doc["spec"]
                check(s.get("completionMode") == "Indexed" and s.get("completions") == s.get("parallelism") and
                      s.get("completions", 0) >= 1, "%s: an Indexed Job, completions = parallelism" % fname)
                check("--until-idle" in args, "%s: serve --until-idle" % where)
    check(len(images) == 1, "one image everywhere (%s)" % ", ".join(sorted(images)))


# ---------------------------------------------------------------- grafana

def psql_csv(sql):
    """(header, rows) of a query, or raises RuntimeError with psql's message."""
    r = subprocess.run(["psql", "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip())
    rows = list(csv.reader(io.StringIO(r.stdout)))
    return (rows[0] if rows else []), rows[1:]


def macros(sql):
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", r"(\1 BETWEEN now() - interval '7 days' AND now())", sql)
    sql = sql.replace("$__timeFrom()", "(now() - interval '7 days')").replace("$__timeTo()", "now()")
    return sql


def substitute(sql, values):
    # longest names first, so $run does not eat $run_id
    for name in sorted(values, key=len, reverse=True):
        sql = sql.replace("$" + name, values[name].replace("'", "''"))
    return sql


def grafana(path):
    d = json.load(open(path))
    ok("the dashboard is JSON")
    for k in ("uid", "title", "schemaVersion", "panels", "templating", "__inputs"):
        check(k in d, "dashboard has %s" % k)
    ds_inputs = [i for i in d.get("__inputs", []) if i.get("type") == "datasource"]
    check(len(ds_inputs) == 1 and ds_inputs[0].get("pluginId") in ("grafana-postgresql-datasource", "postgres"),
          "one PostgreSQL data source input")
    ds_ref = "${%s}" % ds_inputs[0]["name"] if ds_inputs else None
    ids = [p.get("id") for p in d["panels"]]
    check(len(ids) == len(set(ids)), "panel ids unique")
    values = {}
    for v in d["templating"]["list"]:
        name = v["name"]
        check(v.get("datasource", {}).get("uid") == ds_ref, "variable %s uses the data source input" % name)
        sql = substitute(macros(v["query"]), values)
        try:
            hdr, rows = psql_csv(sql)
        except RuntimeError as e:
            fail("variable %s: %s\n    %s" % (name, e, sql))
            continue
        if check(len(rows) > 0, "variable %s: its query runs and offers %d values" % (name, len(rows))):
            values[name] = rows[0][0]
    kinds = {"timeseries": "time", "trend": "step"}
    for p in d["panels"]:
        title = substitute(p["title"], values)
        check(p.get("datasource", {}).get("uid") == ds_ref, "panel %r uses the data source input" % title)
        check(all(k in p.get("gridPos", {}) for k in "xywh"), "panel %r has a place" % title)
        for t in p.get("targets", []):
            check(t.get("rawQuery") is True and t.get("format") in ("table", "time_series"),
                  "panel %r: a raw SQL query, format %s" % (title, t.get("format")))
            sql = substitute(macros(t["rawSql"]), values)
            left = re.findall(r"\$\w+", sql)
            check(not left, "panel %r: every variable known%s" % (title, " (left: %s)" % left if left else ""))
            try:
                hdr, rows = psql_csv(sql)
            except RuntimeError as e:
                fail("panel %r: %s\n    %s" % (title, e, sql.replace("\n", "\n    ")))
                continue
            check(len(rows) > 0, "panel %r: the query runs and returns %d rows" % (title, len(rows)))
            need = kinds.get(p["type"])
            if t.get("format") == "time_series":
                need = "time"
            if need:
                check(need in hdr, "panel %r: a %s column (%s)" % (title, need, ", ".join(hdr)))


# ---------------------------------------------------------------- container

def dockerignore(root):
    pats = []
    try:
        for line in open(os.path.join(root, ".dockerignore")):
            line = line.strip()
            if line and not line.startswith("#"):
                pats.append(line.rstrip("/"))
    except OSError:
        pass
    return pats


def ignored(path, pats):
    parts = path.split("/")
    for pat in pats:
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatch("/".join(parts[:i]), pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                return True
    return False


def container(path, root, installed, pkgs_out):
    text = open(path).read()
    # join continuation lines
    lines = re.sub(r"\\\n", " ", text).split("\n")
    instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "")
             for l in (x.strip() for x in lines) if l and not l.startswith("#")]
    froms = [a for i, a in instr if i == "FROM"]
    check(len(froms) == 2, "two stages (%s)" % "; ".join(froms))
    check(all(re.match(r"debian:12(-slim)?( |$)", f) for f in froms), "Debian 12 bases")
    check(froms and froms[0].endswith(" AS build"), "the first stage is named build")
    pats = dockerignore(root)
    stage, runtime_pkgs, copied = 0, [], []
    for i, a in instr:
        if i == "FROM":
            stage += 1
            continue
        if i == "COPY":
            words = shlex.split(a)
            frm = [w for w in words if w.startswith("--from=")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            dest = [w for w in words if not w.startswith("--")][-1]
            for s in srcs:
                if frm:
                    check(frm[0] == "--from=build" and s.startswith("/out/") and
                          os.path.exists(os.path.join(installed, s[len("/out/"):])),
                          "COPY --from=build %s: make install puts it there" % s)
                    copied.append(os.path.join(dest, os.path.basename(s)) if dest.endswith("/") else dest)
                else:
                    check(os.path.exists(os.path.join(root, s)) and not ignored(s, pats),
                          "COPY %s: in the build context" % s)
        if i == "RUN":
            for s in re.findall(r"/src/(scripts/[\w.-]+)", a):
                check(os.access(os.path.join(root, s), os.X_OK), "RUN %s: present and executable" % s)
            if "install-deps" in a:
                check("--build" in a and '"--build"' in open(os.path.join(root, "scripts/install-deps")).read(),
                      "RUN install-deps --build: the script knows --build")
            if "make" in a.split():
                check(os.path.exists(os.path.join(root, "Makefile")), "RUN make: the Makefile is copied")
            if stage == 2 and "apt-get install" in a:
                seg = a.split("apt-get install", 1)[1].split("&&")[0]
                runtime_pkgs += [w for w in seg.split() if not w.startswith("-")]
    users = [a for i, a in instr if i == "USER"]
    check(users and not users[-1].startswith("0") and users[-1].split(":")[0] != "root", "a non-root USER")
    ep = [a for i, a in instr if i == "ENTRYPOINT"]
    if check(len(ep) == 1, "one ENTRYPOINT"):
        binary = json.loads(ep[0])[0]
        check(binary in copied, "ENTRYPOINT %s was copied from the build stage" % binary)
    check(len(runtime_pkgs) > 0, "runtime packages listed (%s)" % " ".join(runtime_pkgs))
    with open(pkgs_out, "w") as f:
        f.write("\n".join(runtime_pkgs) + "\n")


def main():
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "k8s":
        k8s(a[1], a[2], a[3])
    elif len(a) == 2 and a[0] == "grafana":
        grafana(a[1])
    elif len(a) == 5 and a[0] == "container":
        container(a[1], a[2], a[3], a[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
