#!/usr/bin/env python3
"""Offline checks of cdrvault's deployment files; check.sh runs them.

    check.py manifests DIR [--cdrvault BIN]
        DIR holds the output of `kubectl kustomize` for the base, the
        lawful-access overlay and keys-init (base.yaml, lawful-access.yaml,
        keys-init.yaml). Validates every resource against the Kubernetes
        API schemas (kubernetes-validate, strict, at each pinned version),
        checks the required fields of the custom resources it has no schema
        for, and asserts the properties cdrvault depends on. With --cdrvault,
        also loads the generated configuration (and the overlay's
        environment) with that binary.
    check.py compose FILE
        The properties of deploy/compose.yaml beyond its schema (check.sh
        checks the Compose Specification schema with check-jsonschema).

Prints each failed property and exits 1 if any failed.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

# The Kubernetes versions the manifests are validated against: the oldest
# they support (persistentVolumeClaimRetentionPolicy, podFailurePolicy and
# CronJob timeZone are all in 1.31) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.31.0", "1.37.0")

NAMESPACE = "cdrvault"
NAME_LABEL = ("app.kubernetes.io/name", "cdrvault")
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
SECURITY_ID = 10001
METRICS_PORT = 9464
API_PORT = 50051
DEPLOY_DIR = Path(__file__).resolve().parent.parent


class Findings:
    """Collects failed properties, each with where it failed."""

    def __init__(self):
        self.failed = []
        self.checked = 0

    def check(self, ok, where, what):
        self.checked += 1
        if not ok:
            self.failed.append(f"{where}: {what}")
        return ok


# --- reading rendered manifests -------------------------------------------


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def named(docs, kind, name):
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found[0] if found else None


def workloads(docs):
    """(resource, pod template) of every kind that makes pods."""
    for doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec", {})
        if kind in ("StatefulSet", "Deployment", "Job"):
            yield doc, spec["template"]
        elif kind == "CronJob":
            yield doc, spec["jobTemplate"]["spec"]["template"]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def statefulset_pods(sts):
    """The labels of each pod of a StatefulSet, as the controller sets them."""
    template = sts["spec"]["template"]["metadata"].get("labels", {})
    name = sts["metadata"]["name"]
    return {f"{name}-{i}": {**template, POD_NAME_LABEL: f"{name}-{i}"} for i in range(sts["spec"].get("replicas", 1))}


def volume_sources(pod_spec):
    return {v["name"]: v for v in pod_spec.get("volumes", [])}


def mounts_of(container):
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def generated_config(docs):
    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("cdrvault-config")]
    if len(maps) != 1 or "cdrvault.toml" not in maps[0].get("data", {}):
        return None, None
    text = maps[0]["data"]["cdrvault.toml"]
    return tomllib.loads(text), text


def inside(path, directory):
    """True if path is directory or lies below it."""
    path, directory = Path(path), Path(directory)
    return path == directory or directory in path.parents


# --- schemas ---------------------------------------------------------------


DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RELABEL_ACTIONS = {
    "replace",
    "keep",
    "drop",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
    "keepequal",
    "dropequal",
}


def check_service_monitor(doc, where, findings):
    """The fields of monitoring.coreos.com/v1 ServiceMonitor that the
    Prometheus Operator's CRD requires or constrains and that these
    manifests use (kubernetes-validate has no schema for custom resources):
    a partial check, not the CRD's full schema."""
    spec = doc.get("spec")
    if not findings.check(isinstance(spec, dict), where, "spec is missing"):
        return
    findings.check(doc.get("metadata", {}).get("name"), where, "metadata.name is missing")
    selector = spec.get("selector")
    findings.check(isinstance(selector, dict), where, "spec.selector (required) is missing")
    for key in selector or {}:
        findings.check(
            key in ("matchLabels", "matchExpressions"), where, f"spec.selector.{key} is not a selector field"
        )
    endpoints = spec.get("endpoints")
    if not findings.check(isinstance(endpoints, list) and endpoints, where, "spec.endpoints is empty"):
        return
    known = {
        "port",
        "targetPort",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
        "honorTimestamps",
        "params",
        "tlsConfig",
        "followRedirects",
    }
    for i, endpoint in enumerate(endpoints):
        at = f"{where}: spec.endpoints[{i}]"
        for key in endpoint:
            findings.check(key in known, at, f"unknown field {key}")
        findings.check(isinstance(endpoint.get("port"), str) or "targetPort" in endpoint, at, "names no port")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                findings.check(DURATION.match(str(endpoint[key])), at, f"{key} {endpoint[key]!r} is not a duration")
        for j, relabel in enumerate(endpoint.get("relabelings", [])):
            rat = f"{at}.relabelings[{j}]"
            findings.check(relabel.get("action", "replace") in RELABEL_ACTIONS, rat, "unknown action")
            for label in relabel.get("sourceLabels", []):
                findings.check(LABEL_NAME.match(label), rat, f"source label {label!r} is not a label name")
            if "targetLabel" in relabel:
                findings.check(isinstance(relabel["targetLabel"], str), rat, "targetLabel is not a string")
    if "jobLabel" in spec:
        findings.check(isinstance(spec["jobLabel"], str), where, "spec.jobLabel is not a string")


def check_prometheus_rule(doc, where, findings):
    """The fields of monitoring.coreos.com/v1 PrometheusRule that the
    operator's CRD requires: named groups of rules, each an alert or a
    record with an expression (a partial check: promtool checks the rules
    themselves in deploy/prometheus/check.sh, and prometheus-rule.py
    --check that they are deploy/prometheus/cdrvault-rules.yml's)."""
    groups = (doc.get("spec") or {}).get("groups")
    if not findings.check(isinstance(groups, list) and groups, where, "spec.groups is empty"):
        return
    for i, group in enumerate(groups):
        at = f"{where}: spec.groups[{i}]"
        findings.check(isinstance(group.get("name"), str), at, "has no name")
        rules = group.get("rules")
        if not findings.check(isinstance(rules, list) and rules, at, "has no rules"):
            continue
        for j, rule in enumerate(rules):
            rat = f"{at}.rules[{j}]"
            findings.check(("alert" in rule) != ("record" in rule), rat, "is not exactly one of alert or record")
            findings.check(isinstance(rule.get("expr"), str) and rule["expr"].strip(), rat, "has no expr")
            if "for" in rule:
                findings.check(DURATION.match(str(rule["for"])), rat, f"for {rule['for']!r} is not a duration")


CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
}


def validate_schemas(docs, source, findings):
    import kubernetes_validate as kv

    for doc in docs:
        where = f"{source}: {ident(doc)}"
        custom = CUSTOM_RESOURCES.get((doc.get("apiVersion"), doc.get("kind")))
        if custom:
            custom(doc, where, findings)
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
                findings.check(True, where, "")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                findings.check(False, where, f"Kubernetes {version} schema: {e.message} (at {path or 'top level'})")
            except kv.SchemaNotFoundError as e:
                findings.check(False, where, f"{e.message}, and no check of its own here")


# --- properties of every pod ------------------------------------------------


def check_pod_security(source, owner, template, findings):
    where = f"{source}: {ident(owner)}"
    spec = template["spec"]
    pod = spec.get("securityContext", {})
    findings.check(pod.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot is not true")
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        findings.check(pod.get(key) == SECURITY_ID, where, f"pod securityContext.{key} is not {SECURITY_ID}")
    findings.check(
        pod.get("fsGroupChangePolicy") == "OnRootMismatch",
        where,
        "fsGroupChangePolicy is not OnRootMismatch (Always makes every file group-readable at each mount)",
    )
    findings.check(
        pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile is not RuntimeDefault"
    )
    findings.check(spec.get("automountServiceAccountToken") is False, where, "mounts a service account token")
    findings.check(spec.get("enableServiceLinks") is False, where, "service links add CDRVAULT_... variables")
    findings.check(not spec.get("hostNetwork") and not spec.get("hostPID"), where, "shares a host namespace")
    volumes = volume_sources(spec)
    for volume in volumes.values():
        findings.check("hostPath" not in volume, where, f"volume {volume['name']} is a hostPath")
    for container in spec.get("initContainers", []) + spec["containers"]:
        at = f"{where}: container {container['name']}"
        sc = container.get("securityContext", {})
        findings.check(sc.get("readOnlyRootFilesystem") is True, at, "readOnlyRootFilesystem is not true")
        findings.check(sc.get("allowPrivilegeEscalation") is False, at, "allowPrivilegeEscalation is not false")
        findings.check("ALL" in sc.get("capabilities", {}).get("drop", []), at, "capabilities do not drop ALL")
        findings.check(not sc.get("capabilities", {}).get("add"), at, "adds capabilities")
        findings.check(not sc.get("privileged"), at, "is privileged")
        findings.check(sc.get("runAsUser", SECURITY_ID) == SECURITY_ID, at, "overrides runAsUser")
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                findings.check(resource in resources.get(kind, {}), at, f"no {kind}.{resource}")
        tmp = mounts_of(container).get("/tmp")
        findings.check(tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}), at, "/tmp is not an emptyDir")
        image = container.get("image", "")
        findings.check(
            re.match(r"^[^:@]+(:[^:@]+)?(@sha256:[0-9a-f]{64})?$", image.rsplit("/", 1)[-1])
            and (":" in image.rsplit("/", 1)[-1] or "@" in image)
            and not image.endswith(":latest"),
            at,
            f"image {image!r} has no fixed tag or digest",
        )


def check_keys_not_secret(source, owner, template, mounts, findings):
    """The keys directory is a writable volume, never a Secret (see
    statefulset.yaml)."""
    where = f"{source}: {ident(owner)}"
    spec = template["spec"]
    volumes = volume_sources(spec)
    for container in spec["containers"]:
        for path, mount in mounts_of(container).items():
            source = volumes.get(mount["name"], {})
            if inside(path, mounts["keys"]) or inside(mounts["keys"], path):
                findings.check(
                    source.get("persistentVolumeClaim", {}).get("claimName") == "cdrvault-keys",
                    where,
                    f"{path} is not the keys claim cdrvault-keys",
                )
            if "secret" in source or "projected" in source:
                findings.check(
                    not inside(path, mounts["keys"]), where, f"a Secret is mounted in the keys directory at {path}"
                )
                findings.check(mount.get("readOnly") is True, where, f"Secret volume at {path} is not read-only")


# --- the base ----------------------------------------------------------------


def check_statefulset(docs, source, findings):
    """Returns (statefulset, its container, mounts by role) or Nones."""
    sts = named(docs, "StatefulSet", "cdrvault")
    if not findings.check(sts is not None, source, "no StatefulSet cdrvault"):
        return None, None, None
    where = f"{source}: {ident(sts)}"
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    findings.check(spec.get("replicas") == 2, where, "replicas is not 2")
    findings.check(spec.get("podManagementPolicy") == "Parallel", where, "podManagementPolicy is not Parallel")
    findings.check(
        pod.get("terminationGracePeriodSeconds", 30) >= 60,
        where,
        "terminationGracePeriodSeconds < 60: serve needs time to flush its open batch",
    )
    containers = {c["name"]: c for c in pod["containers"]}
    container = containers.get("cdrvault")
    if not findings.check(container is not None, where, "no container cdrvault"):
        return sts, None, None
    findings.check(container["image"].split("/")[-1].startswith("cdrvault:"), where, "image is not cdrvault")
    findings.check(
        container.get("args") == ["--config", "/etc/cdrvault/cdrvault.toml", "serve"],
        where,
        "args are not --config /etc/cdrvault/cdrvault.toml serve",
    )
    env = {e["name"]: e for e in container.get("env", [])}
    findings.check(
        env.get("CDRVAULT_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        == "metadata.name",
        where,
        "CDRVAULT_INSTANCE_ID does not come from metadata.name",
    )
    ports = {p["name"]: p for p in container.get("ports", [])}
    findings.check(
        ports.get("metrics", {}).get("containerPort") == METRICS_PORT, where, f"no port metrics = {METRICS_PORT}"
    )
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        got = container.get(probe, {}).get("httpGet", {})
        findings.check(
            got.get("path") == path and got.get("port") in ("metrics", METRICS_PORT),
            where,
            f"{probe} is not GET {path} on port metrics",
        )
    startup = container.get("startupProbe", {})
    findings.check(
        startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 600,
        where,
        "startupProbe allows less than 10 minutes for start-up recovery",
    )

    volumes = volume_sources(pod)
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = {}
    for path, mount in mounts_of(container).items():
        name = mount["name"]
        if name in claims:
            mounts[name] = path
        elif "persistentVolumeClaim" in volumes.get(name, {}):
            mounts[volumes[name]["persistentVolumeClaim"]["claimName"].removeprefix("cdrvault-")] = path
    why = {
        "data": "the claim cdrvault-data",
        "keys": "the claim cdrvault-keys: a writable volume, not a Secret, since serve writes day keys and "
        "signed heads there, and a Secret's files under fsGroup are 0440, which cdrvault refuses for master.key",
        "state": "the volumeClaimTemplate state",
    }
    for role in ("data", "keys", "state"):
        findings.check(role in mounts, where, f"no {role} volume mounted from {why[role]}")
    if "state" in claims:
        findings.check(
            claims["state"]["spec"].get("accessModes") == ["ReadWriteOnce"], where, "state claim is not ReadWriteOnce"
        )
    else:
        findings.check(False, where, "no volumeClaimTemplate state")
    findings.check(
        spec.get("persistentVolumeClaimRetentionPolicy", {}).get("whenScaled") == "Retain",
        where,
        "state volumes (the audit trails) are not retained on scale-down",
    )
    config = mounts_of(container).get("/etc/cdrvault/cdrvault.toml")
    findings.check(
        config is not None
        and config.get("readOnly") is True
        and config.get("subPath") == "cdrvault.toml"
        and volumes.get(config["name"], {}).get("configMap", {}).get("name", "").startswith("cdrvault-config"),
        where,
        "cdrvault.toml is not mounted read-only from the generated ConfigMap",
    )
    for claim in ("cdrvault-data", "cdrvault-keys"):
        pvc = named(docs, "PersistentVolumeClaim", claim)
        findings.check(
            pvc is not None and pvc["spec"].get("accessModes") == ["ReadWriteMany"],
            source,
            f"claim {claim} is missing or not ReadWriteMany (every instance mounts it)",
        )
    return sts, container, mounts


def check_config(docs, source, mounts, findings, allowed_keys):
    config, _ = generated_config(docs)
    if not findings.check(config is not None, source, "no generated ConfigMap cdrvault-config with cdrvault.toml"):
        return None
    where = f"{source}: cdrvault.toml"
    findings.check(
        config.get("http", {}).get("listen") == f"0.0.0.0:{METRICS_PORT}",
        where,
        f"[http] listen is not 0.0.0.0:{METRICS_PORT}",
    )
    findings.check("access" not in config, where, "has an [access] section (the base is ingest only)")
    data = config.get("storage", {}).get("data_dir", "")
    keys = config.get("keys", {}).get("dir", "")
    state = config.get("state", {}).get("dir", "")
    if mounts:
        findings.check(inside(data, mounts["data"]), where, f"data_dir {data} is not on the data volume")
        for name, value in (("keys.dir", keys), ("state.dir", state)):
            role = name.split(".")[0]
            findings.check(
                inside(value, mounts[role]) and Path(value) != Path(mounts[role]),
                where,
                f"{name} {value} is not a directory below the {role} volume's mount point {mounts[role]} "
                "(fsGroup makes the mount point group-writable, which cdrvault refuses)",
            )
    findings.check(not inside(keys, data), where, "keys.dir lies inside storage.data_dir")
    findings.check(not inside(state, data), where, "state.dir lies inside storage.data_dir")
    kafka = config.get("kafka", {})
    findings.check(kafka.get("brokers"), where, "[kafka] brokers is empty")
    findings.check(kafka.get("topics"), where, "no [[kafka.topics]]")
    for topic in kafka.get("topics", []):
        findings.check(topic.get("name"), where, "a topic without a name")
    for key in config_keys(config):
        findings.check(
            key in allowed_keys or key.startswith("kafka.properties."),
            where,
            f"{key} is not a key of deploy/cdrvault.example.toml (cdrvault refuses unknown keys)",
        )
    return config


def config_keys(tree, prefix=""):
    """The dotted path of every value in a configuration tree; the tables
    of an array share their array's path (kafka.topics.name)."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from config_keys(value, f"{path}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                yield from config_keys(item, f"{path}.")
        else:
            yield path


def example_keys():
    """The dotted path of every key in deploy/cdrvault.example.toml, set or
    shown in a comment."""
    keys, section = set(), ""
    for line in (DEPLOY_DIR / "cdrvault.example.toml").read_text().splitlines():
        header = re.match(r"^\s*#?\s*\[\[?([a-z_.0-9]+)\]?\]\s*$", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^\s*#?\s*([a-z_][a-z_0-9]*)\s*=", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def image_environment():
    """The CDRVAULT_ variables the image sets (the ENV instructions of the
    last stage of deploy/Dockerfile), or None without a Dockerfile."""
    dockerfile = DEPLOY_DIR / "Dockerfile"
    if not dockerfile.exists():
        return None
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    env = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if not words:
            continue
        if words[0].upper() == "FROM":
            env = {}
        elif words[0].upper() == "ENV" and len(words) == 2:
            parts = shlex.split(words[1])
            if parts and "=" not in parts[0]:
                env[parts[0]] = " ".join(parts[1:])
            else:
                env.update(part.split("=", 1) for part in parts)
    return {k: v for k, v in env.items() if k.startswith("CDRVAULT_") and "__" in k}


def check_image_environment(image_env, users, config, where, findings):
    """Environment overrides beat the configuration file, so a variable the
    image sets, and a container running the image does not set itself, must
    agree with cdrvault.toml, or it silently changes what the file says.
    users: {who: the container's own environment}."""
    if image_env is None:
        findings.check(False, where, "no deploy/Dockerfile to read the image's environment from")
        return
    for name, value in image_env.items():
        section, key = name.removeprefix("CDRVAULT_").lower().split("__", 1)
        configured = config.get(section, {}).get(key)
        overridden = [who for who, env in users.items() if name not in env]
        findings.check(
            not overridden or (configured is not None and str(configured) == value),
            where,
            f"deploy/Dockerfile sets ENV {name}={value}, which overrides cdrvault.toml's {section}.{key} "
            f"({'= ' + str(configured) if configured is not None else 'not set'}) in {', '.join(overridden)}; "
            "drop it from the image or set it in these containers",
        )


def check_services(docs, source, sts, findings):
    pods = statefulset_pods(sts)
    other_pods = [t["metadata"].get("labels", {}) for d, t in workloads(docs) if d is not sts]
    for name in ("cdrvault", "cdrvault-metrics"):
        svc = named(docs, "Service", name)
        if not findings.check(svc is not None, source, f"no Service {name}"):
            continue
        where = f"{source}: {ident(svc)}"
        selector = svc["spec"].get("selector", {})
        findings.check(all(selects(selector, p) for p in pods.values()), where, "does not select every instance")
        findings.check(
            not any(selects(selector, labels) for labels in other_pods), where, "also selects pods of the jobs"
        )
        ports = {p["name"]: p for p in svc["spec"].get("ports", [])}
        findings.check(ports.get("metrics", {}).get("port") == METRICS_PORT, where, f"no port metrics = {METRICS_PORT}")
    headless = named(docs, "Service", "cdrvault")
    findings.check(
        headless is not None and headless["spec"].get("clusterIP") == "None", source, "Service cdrvault is not headless"
    )
    findings.check(sts["spec"].get("serviceName") == "cdrvault", source, "StatefulSet serviceName is not cdrvault")

    monitors = of_kind(docs, "ServiceMonitor")
    if findings.check(len(monitors) == 1, source, "not exactly one ServiceMonitor"):
        monitor = monitors[0]
        where = f"{source}: {ident(monitor)}"
        selector = monitor["spec"].get("selector", {}).get("matchLabels", {})
        scraped = [
            s["metadata"]["name"]
            for s in of_kind(docs, "Service")
            if selects(selector, s["metadata"].get("labels", {}))
        ]
        findings.check(
            scraped == ["cdrvault-metrics"], where, f"selects Services {scraped}, not cdrvault-metrics alone"
        )
        endpoints = monitor["spec"].get("endpoints", [])
        findings.check(
            any(e.get("port") == "metrics" and e.get("interval") == "30s" for e in endpoints),
            where,
            "does not scrape port metrics every 30s",
        )

    pdbs = of_kind(docs, "PodDisruptionBudget")
    if findings.check(len(pdbs) == 1, source, "not exactly one PodDisruptionBudget"):
        pdb = pdbs[0]
        where = f"{source}: {ident(pdb)}"
        findings.check(pdb["spec"].get("maxUnavailable") == 1, where, "maxUnavailable is not 1")
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        findings.check(all(selects(selector, p) for p in pods.values()), where, "does not select every instance")
        findings.check(not any(selects(selector, l) for l in other_pods), where, "also selects pods of the jobs")


def check_cronjobs(docs, source, mounts, findings):
    wanted = {"retention": "cdrvault-retention-verify", "audit": "cdrvault-audit-verify"}
    found = {d["metadata"]["name"]: d for d in of_kind(docs, "CronJob")}
    findings.check(
        set(found) == set(wanted.values()), source, f"CronJobs are {sorted(found)}, not {sorted(wanted.values())}"
    )
    for command, name in wanted.items():
        cron = found.get(name)
        if cron is None:
            continue
        where = f"{source}: {ident(cron)}"
        spec = cron["spec"]
        fields = spec.get("schedule", "").split()
        findings.check(
            len(fields) == 5 and fields[0].isdigit() and fields[1].isdigit() and fields[2:] == ["*", "*", "*"],
            where,
            f"schedule {spec.get('schedule')!r} is not once a day",
        )
        findings.check(spec.get("concurrencyPolicy") == "Forbid", where, "concurrencyPolicy is not Forbid")
        for key in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
            findings.check(spec.get(key, 0) >= 7, where, f"{key} < 7: the evidence (job logs) is not kept a week")
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        findings.check(
            container.get("args", [])[-2:] == [command, "verify"]
            and container.get("args", [])[:2] == ["--config", "/etc/cdrvault/cdrvault.toml"],
            where,
            f"does not run cdrvault --config /etc/cdrvault/cdrvault.toml {command} verify",
        )
        volumes = volume_sources(pod)
        claims = {}
        for path, mount in mounts_of(container).items():
            claim = volumes.get(mount["name"], {}).get("persistentVolumeClaim")
            if claim:
                claims[claim["claimName"]] = (path, mount.get("readOnly") is True or claim.get("readOnly") is True)
        findings.check(
            claims.get("state-cdrvault-0", ("",))[0] == mounts["state"],
            where,
            f"does not mount instance 0's state (state-cdrvault-0) at {mounts['state']}, where serve has it",
        )
        findings.check(
            claims.get("cdrvault-keys", ("",))[0] == mounts["keys"],
            where,
            f"does not mount the keys at {mounts['keys']}",
        )
        if command == "audit":
            findings.check(all(ro for _, ro in claims.values()), where, "mounts a volume writable (it only reads)")
        else:
            findings.check(
                claims.get("cdrvault-data", ("", False)) == (mounts["data"], True),
                where,
                f"does not mount the data read-only at {mounts['data']}",
            )
        affinity = (
            pod.get("affinity", {}).get("podAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
        )
        findings.check(
            any(
                term.get("topologyKey") == "kubernetes.io/hostname"
                and term.get("labelSelector", {}).get("matchLabels") == {POD_NAME_LABEL: "cdrvault-0"}
                for term in affinity
            ),
            where,
            "not bound to cdrvault-0's node, where its ReadWriteOnce state volume is attached",
        )


# --- network policies ---------------------------------------------------------


def admitted(docs, pod_labels, container_ports, where, findings):
    """{port: set of peer namespaces} that the NetworkPolicies of these
    manifests admit to a pod with these labels, or None if nothing
    restricts its ingress. A rule or peer that would admit more than a port
    from a named namespace is a finding."""
    result, restricted = {}, False
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        at = f"{where}: {ident(policy)}"
        findings.check(
            "matchExpressions" not in spec.get("podSelector", {}), at, "matchExpressions: not understood here"
        )
        if not selects(spec.get("podSelector", {}).get("matchLabels", {}), pod_labels):
            continue
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        restricted = True
        for rule in spec.get("ingress", []):
            peers, ports = rule.get("from"), rule.get("ports")
            if not findings.check(peers and ports, at, "an ingress rule without from or ports admits everything"):
                continue
            namespaces = set()
            for peer in peers:
                selector = peer.get("namespaceSelector", {})
                ok = (
                    set(peer) == {"namespaceSelector"}
                    and set(selector) == {"matchLabels"}
                    and set(selector["matchLabels"]) == {"kubernetes.io/metadata.name"}
                )
                if findings.check(ok, at, f"peer {peer} is not one namespace by name"):
                    namespaces.add(selector["matchLabels"]["kubernetes.io/metadata.name"])
            for port in ports:
                number = container_ports.get(port.get("port"), port.get("port"))
                findings.check("endPort" not in port, at, "a port range")
                result.setdefault(number, set()).update(namespaces)
    return result if restricted else None


def check_network(docs, source, sts, want, findings):
    """want: {pod name: {port: set of namespaces}}."""
    container_ports = {
        p["name"]: p["containerPort"]
        for c in sts["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }
    for pod, labels in statefulset_pods(sts).items():
        got = admitted(docs, labels, container_ports, source, findings)
        findings.check(got is not None, source, f"no NetworkPolicy restricts ingress to {pod}")
        findings.check(got == want[pod], source, f"{pod} admits {got}, expected {want[pod]}")
    for owner, template in workloads(docs):
        if owner is sts:
            continue
        got = admitted(docs, template["metadata"].get("labels", {}), {}, source, findings)
        findings.check(
            got is not None and API_PORT not in got,
            source,
            f"{ident(owner)}: ingress not restricted, or 50051 admitted",
        )


# --- the variants -------------------------------------------------------------


def check_base_like(docs, source, findings, allowed_keys):
    validate_schemas(docs, source, findings)
    for doc in docs:
        where = f"{source}: {ident(doc)}"
        if doc["kind"] != "Namespace":
            findings.check(doc["metadata"].get("namespace") == NAMESPACE, where, f"not in namespace {NAMESPACE}")
        findings.check(
            doc["metadata"].get("labels", {}).get(NAME_LABEL[0]) == NAME_LABEL[1],
            where,
            "no label app.kubernetes.io/name",
        )
        findings.check(doc["kind"] != "Secret", where, "a Secret in the manifests (Secrets are the operator's)")
    for owner, template in workloads(docs):
        check_pod_security(source, owner, template, findings)
    sts, container, mounts = check_statefulset(docs, source, findings)
    if container is None or mounts is None or len(mounts) < 3:
        return None, None, None
    config = check_config(docs, source, mounts, findings, allowed_keys)
    check_services(docs, source, sts, findings)
    check_cronjobs(docs, source, mounts, findings)
    users = {}
    for owner, template in workloads(docs):
        check_keys_not_secret(source, owner, template, mounts, findings)
        for container in template["spec"]["containers"]:
            users[ident(owner)] = {e["name"] for e in container.get("env", [])}
    if config is not None:
        check_image_environment(image_environment(), users, config, source, findings)
    return sts, mounts, config


def check_base(docs, findings, allowed_keys):
    source = "base"
    sts, mounts, config = check_base_like(docs, source, findings, allowed_keys)
    if sts is None:
        return None, None
    text = yaml.safe_dump_all(docs)
    findings.check(str(API_PORT) not in text, source, f"mentions {API_PORT}: the base serves no API")
    check_network(docs, source, sts, {pod: {METRICS_PORT: {"monitoring"}} for pod in statefulset_pods(sts)}, findings)
    return mounts, config


def check_overlay(docs, findings, allowed_keys):
    source = "overlays/lawful-access"
    sts, _, _ = check_base_like(docs, source, findings, allowed_keys)
    if sts is None:
        return None
    where = f"{source}: {ident(sts)}"
    pod = sts["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "cdrvault")
    ports = {p["name"]: p for p in container.get("ports", [])}
    findings.check(
        ports.get("grpc", {}).get("containerPort") == API_PORT, where, f"no container port grpc = {API_PORT}"
    )
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    findings.check(
        env.get("CDRVAULT_ACCESS__LISTEN") == f"0.0.0.0:{API_PORT}", where, f"access.listen is not 0.0.0.0:{API_PORT}"
    )
    volumes = volume_sources(pod)
    for key in ("CDRVAULT_ACCESS__TLS_CERT", "CDRVAULT_ACCESS__TLS_KEY"):
        path = env.get(key)
        mount = next(
            (
                m
                for p, m in mounts_of(container).items()
                if path and inside(path, p) and "secret" in volumes.get(m["name"], {})
            ),
            None,
        )
        findings.check(
            mount is not None and mount.get("readOnly") is True,
            where,
            f"{key} is not a file of a Secret mounted read-only (the API runs over TLS)",
        )

    api = named(docs, "Service", "cdrvault-api")
    if findings.check(api is not None, source, "no Service cdrvault-api"):
        at = f"{source}: {ident(api)}"
        selected = [
            p for p, labels in statefulset_pods(sts).items() if selects(api["spec"].get("selector", {}), labels)
        ]
        findings.check(selected == ["cdrvault-0"], at, f"selects {selected}, not the API's instance cdrvault-0 alone")
        port = {p["name"]: p for p in api["spec"].get("ports", [])}.get("grpc", {})
        findings.check(
            port.get("port") == API_PORT and port.get("targetPort") in ("grpc", API_PORT),
            at,
            f"no port grpc = {API_PORT}",
        )
    want = {pod: {METRICS_PORT: {"monitoring"}} for pod in statefulset_pods(sts)}
    want["cdrvault-0"] = {METRICS_PORT: {"monitoring"}, API_PORT: {"lawful-access"}}
    check_network(docs, source, sts, want, findings)
    return sts


def check_keys_init(docs, mounts, config, findings):
    source = "keys-init"
    validate_schemas(docs, source, findings)
    jobs = of_kind(docs, "Job")
    if not findings.check(
        [d["metadata"]["name"] for d in jobs] == ["cdrvault-keys-init"], source, "not one Job cdrvault-keys-init"
    ):
        return
    job = jobs[0]
    check_pod_security(source, job, job["spec"]["template"], findings)
    if mounts is None or config is None:
        return
    check_keys_not_secret(source, job, job["spec"]["template"], mounts, findings)
    args = job["spec"]["template"]["spec"]["containers"][0].get("args", [])
    where = f"{source}: {ident(job)}"
    findings.check(
        args[-4:-1] == ["keys", "init", "--dir"] and args[-1] == config["keys"]["dir"],
        where,
        f"does not run keys init --dir {config['keys']['dir']} (the base's keys.dir)",
    )
    findings.check(
        args[:2] == ["--data-dir", config["storage"]["data_dir"]], where, "--data-dir is not the base's data_dir"
    )


def check_with_binary(binary, base_docs, overlay_docs, findings):
    """Loads the generated cdrvault.toml, with the overlay's environment,
    through cdrvault itself: keys init, then retention verify, which
    validates the whole configuration and opens keys, audit trail and
    registry. Directories are redirected to a scratch directory."""
    _, text = generated_config(base_docs)
    sts = named(overlay_docs, "StatefulSet", "cdrvault")
    container = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "cdrvault")
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch, "cdrvault.toml")
        config.write_text(text)
        dirs = ["--data-dir", f"{scratch}/data", "--keys-dir", f"{scratch}/keys", "--state-dir", f"{scratch}/state"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CDRVAULT_")}
        for what, extra, command in (
            ("base", {}, ["keys", "init"]),
            ("base", {}, ["retention", "verify"]),
            ("overlays/lawful-access", env, ["retention", "verify"]),
        ):
            run = subprocess.run(
                [binary, "--config", str(config), *dirs, *command],
                env={**clean, **extra},
                check=False,
                capture_output=True,
                text=True,
            )
            findings.check(
                run.returncode == 0,
                f"{what}: cdrvault {' '.join(command)} with the generated configuration",
                (run.stderr or run.stdout).strip()[-500:],
            )


def manifests(args):
    findings = Findings()
    rendered = Path(args.dir)
    allowed = example_keys()
    base = load_docs(rendered / "base.yaml")
    overlay = load_docs(rendered / "lawful-access.yaml")
    keys_init = load_docs(rendered / "keys-init.yaml")
    mounts, config = check_base(base, findings, allowed)
    check_overlay(overlay, findings, allowed)
    check_keys_init(keys_init, mounts, config, findings)
    if args.cdrvault and config is not None:
        check_with_binary(args.cdrvault, base, overlay, findings)
    return report(findings, f"{len(base) + len(overlay) + len(keys_init)} rendered resources", "manifests")


# --- compose --------------------------------------------------------------------


def seconds(duration):
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", str(duration)))


def compose(args):
    findings = Findings()
    path = Path(args.file)
    base = path.parent
    with open(path) as f:
        spec = yaml.safe_load(f)
    services = spec.get("services", {})
    default = {n for n, s in services.items() if not s.get("profiles")}
    monitoring = {n for n, s in services.items() if "monitoring" in s.get("profiles", [])}
    findings.check(
        {"kafka", "cdrvault"} <= default, "compose", f"`up` alone runs {sorted(default)}, not kafka and cdrvault"
    )
    findings.check(monitoring == {"prometheus", "grafana"}, "compose", f"profile monitoring adds {sorted(monitoring)}")
    for name, service in services.items():
        where = f"compose: service {name}"
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            findings.check(host_ip == "127.0.0.1", where, f"port {port} is not bound to 127.0.0.1")
        image = service.get("image", "")
        if "build" not in service:
            findings.check(
                re.search(r":[\w][\w.-]*(@sha256:[0-9a-f]{64})?$", image) and not image.endswith(":latest"),
                where,
                f"image {image!r} has no fixed tag",
            )
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/")):
                findings.check((base / source).exists(), where, f"mounts {source}, which does not exist")
        build = service.get("build")
        if build:
            context = base / build.get("context", ".")
            findings.check(
                (context / build.get("dockerfile", "Dockerfile")).exists(),
                where,
                f"builds from {build.get('dockerfile')} in {build.get('context')}, which does not exist",
            )
    findings.check(
        services.get("kafka", {}).get("image", "").startswith("docker.io/apache/kafka:"),
        "compose",
        "kafka is not docker.io/apache/kafka",
    )
    cdrvault = services.get("cdrvault", {})
    where = "compose: service cdrvault"
    findings.check(
        cdrvault.get("build", {}).get("context") == ".."
        and cdrvault.get("build", {}).get("dockerfile") == "deploy/Dockerfile",
        where,
        "is not built from deploy/Dockerfile with the repository as context",
    )
    findings.check(cdrvault.get("command", [])[-1:] == ["serve"], where, "does not run serve")
    findings.check(seconds(cdrvault.get("stop_grace_period", "10s")) >= 60, where, "stop_grace_period < 60s")
    findings.check(cdrvault.get("read_only") is True, where, "root filesystem is not read-only")
    findings.check("ALL" in cdrvault.get("cap_drop", []), where, "does not drop all capabilities")
    findings.check(
        str(cdrvault.get("user", "")).split(":")[0] == str(SECURITY_ID), where, f"does not run as {SECURITY_ID}"
    )
    depends = cdrvault.get("depends_on", {})
    findings.check(
        isinstance(depends, dict)
        and any(
            "keys" in " ".join(map(str, services.get(n, {}).get("command", [])))
            and c.get("condition") == "service_completed_successfully"
            for n, c in depends.items()
        ),
        where,
        "does not wait for a one-shot service that runs keys init",
    )
    toml = base / "kubernetes" / "base" / "cdrvault.toml"
    if findings.check(toml.exists(), "compose", "kubernetes/base/cdrvault.toml is missing"):
        config = tomllib.loads(toml.read_text())
        users = {}
        for name, service in services.items():
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile":
                env = service.get("environment", {})
                users[f"service {name}"] = {e.split("=", 1)[0] for e in env} if isinstance(env, list) else set(env)
        check_image_environment(image_environment(), users, config, "compose", findings)
    prometheus = services.get("prometheus", {})
    targets = {str(v).split(":")[1] for v in prometheus.get("volumes", []) if isinstance(v, str)}
    config_file = base / "prometheus" / "prometheus.yml"
    if findings.check(config_file.exists(), "compose", "deploy/prometheus/prometheus.yml is missing"):
        prom = yaml.safe_load(config_file.read_text())
        for rule_file in prom.get("rule_files", []):
            findings.check(rule_file in targets, "prometheus.yml", f"rule file {rule_file} is not mounted by compose")
        jobs = {j["job_name"]: j for j in prom.get("scrape_configs", [])}
        findings.check(
            "cdrvault:9464"
            in [t for c in jobs.get("cdrvault", {}).get("static_configs", []) for t in c.get("targets", [])],
            "prometheus.yml",
            "job cdrvault does not scrape cdrvault:9464",
        )
    return report(findings, f"{len(services)} compose services", "compose")


def report(findings, what, label):
    for failure in findings.failed:
        print(f"FAILED {failure}")
    print(f"checked {what}")
    print(f"{label}: {findings.checked - len(findings.failed)} passed, {len(findings.failed)} failed")
    return 1 if findings.failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("dir")
    m.add_argument("--cdrvault", help="a cdrvault binary to load the generated configuration with")
    c = sub.add_parser("compose")
    c.add_argument("file")
    args = parser.parse_args()
    return manifests(args) if args.command == "manifests" else compose(args)


if __name__ == "__main__":
    sys.exit(main())
