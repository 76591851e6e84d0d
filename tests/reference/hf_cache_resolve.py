#!/usr/bin/python3
"""hf_cache_resolve.py - resolve files in a HuggingFace hub cache the way
huggingface_hub does, independently of ckptd (Python's standard library only),
and check that the cache is laid out as huggingface_hub lays it out.

    hf_cache_resolve.py (--cache HUB_DIR | --from-env) --repo ORG/NAME
                        --revision REV [--manifest MANIFEST.json] FILE...

Where the cache is (--from-env), as huggingface_hub.constants computes it:
HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, HF_HOME being
HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (with ~
and $VARS expanded).

Resolution, as try_to_load_from_cache(repo_id, filename, revision) does it:
models--ORG--NAME/; if refs/REV is a file its content is the commit, else REV
is used as given; .no_exist/<commit>/<file> means "known absent";
snapshots/<commit> must exist (no other revision is ever used); the file is
snapshots/<commit>/<file> when it is a file once symlinks are followed.

Layout checks (what huggingface_hub writes): refs/REV holds exactly 40 hex
digits and no newline; the snapshot entry is a symlink whose target is
relative, equal to ../../blobs/<etag> (one ../ more per directory of the file
name), inside the repository folder; the blob is a regular file named by 40
or 64 lowercase hex digits, and its content is what the name says: the
sha256 for 64 digits (an LFS file), the git blob sha1 for 40.

With --manifest (scripts/hub-serve's SDIR/manifest.json, what the server
holds): the commit must be the revision's commit there, each file's sha256
the served file's, and its blob name the ETag the hub sends for it (the
sha256 for LFS files, else the git blob oid).

Prints one line per file and "ok" / the problems; exits 0 when every file
resolves and every check holds, 1 otherwise, 2 on usage errors.
"""
import argparse
import hashlib
import json
import os
import re
import sys

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def env_hub_cache():
    def expand(p):
        return os.path.expandvars(os.path.expanduser(p))

    hf_home = os.environ.get("HF_HOME")
    if not hf_home:
        xdg = os.environ.get("XDG_CACHE_HOME")
        hf_home = os.path.join(xdg, "huggingface") if xdg else os.path.join("~", ".cache", "huggingface")
    hf_home = expand(hf_home)
    legacy = os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(hf_home, "hub")
    return expand(os.environ.get("HF_HUB_CACHE") or legacy)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_sha1_file(path):
    size = os.path.getsize(path)
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--cache")
    where.add_argument("--from-env", action="store_true")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--revision", required=True)
    ap.add_argument("--manifest")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    cache = env_hub_cache() if a.from_env else a.cache
    problems = []
    repo_dir = os.path.join(cache, "models--" + a.repo.replace("/", "--"))
    if not os.path.isdir(repo_dir):
        print("%s: no repository folder %s" % (a.repo, repo_dir))
        return 1

    # the revision's commit, as try_to_load_from_cache reads it
    commit = a.revision
    ref = os.path.join(repo_dir, "refs", a.revision)
    if os.path.isfile(ref):
        with open(ref, "rb") as f:
            raw = f.read()
        commit = raw.decode("ascii", "replace")
        if not HEX40.match(commit):
            problems.append("refs/%s holds %r, not 40 hex digits without a newline" % (a.revision, raw[:60]))
    want = None
    if a.manifest:
        with open(a.manifest) as f:
            m = json.load(f)
        want = m["revisions"].get(a.revision)
        if want is None:
            problems.append("revision %s is not in %s" % (a.revision, a.manifest))
        elif commit != want["commit"]:
            problems.append("commit %s, but the hub serves %s at %s" % (commit, want["commit"], a.revision))
    snap_root = os.path.join(repo_dir, "snapshots")
    if not os.path.isdir(snap_root) or commit not in os.listdir(snap_root):
        problems.append("no snapshot for %s (commit %s)" % (a.revision, commit))
        print("\n".join(problems))
        return 1

    for name in a.files:
        if os.path.isfile(os.path.join(repo_dir, ".no_exist", commit, name)):
            problems.append("%s: marked absent at %s (.no_exist)" % (name, commit))
            continue
        entry = os.path.join(snap_root, commit, name)
        if not os.path.isfile(entry):
            problems.append("%s: not in snapshot %s" % (name, commit))
            continue
        # the layout huggingface_hub writes
        if not os.path.islink(entry):
            problems.append("%s: not a symlink" % name)
            continue
        target = os.readlink(entry)
        depth = name.count("/")
        if os.path.isabs(target):
            problems.append("%s: absolute symlink %s" % (name, target))
        blob_name = os.path.basename(target)
        if target != "../../" + "../" * depth + "blobs/" + blob_name:
            problems.append("%s: symlink target %s is not ../../blobs/<etag>" % (name, target))
        blob = os.path.realpath(entry)
        if os.path.dirname(blob) != os.path.realpath(os.path.join(repo_dir, "blobs")):
            problems.append("%s: resolves outside blobs/: %s" % (name, blob))
        if os.path.islink(os.path.join(repo_dir, "blobs", blob_name)) or not os.path.isfile(blob):
            problems.append("%s: blob %s is not a regular file" % (name, blob_name))
            continue
        sha = sha256_file(blob)
        if HEX64.match(blob_name):
            if sha != blob_name:
                problems.append("%s: blob named %s holds sha256 %s" % (name, blob_name, sha))
        elif HEX40.match(blob_name):
            g = git_sha1_file(blob)
            if g != blob_name:
                problems.append("%s: blob named %s holds git sha1 %s" % (name, blob_name, g))
        else:
            problems.append("%s: blob name %s is not an ETag (40 or 64 hex digits)" % (name, blob_name))
        if want is not None:
            served = {f["path"]: f for f in want["files"]}.get(name)
            if served is None:
                problems.append("%s: not served at %s" % (name, a.revision))
            else:
                if sha != served["sha256"]:
                    problems.append("%s: sha256 %s, the hub serves %s" % (name, sha, served["sha256"]))
                etag = served["sha256"] if served["lfs"] else served["oid"]
                if blob_name != etag:
                    problems.append("%s: blob %s, but the hub's ETag is %s" % (name, blob_name, etag))
        print("%s -> snapshots/%s/%s -> blobs/%s sha256=%s size=%d" % (
            name, commit, name, blob_name, sha, os.path.getsize(blob)))
    for p in problems:
        print("PROBLEM: " + p)
    print("ok" if not problems else "%d problems" % len(problems))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
