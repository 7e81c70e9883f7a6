#!/usr/bin/env python3
"""Regenerates k8s-1.35-definitions.json: the OpenAPI definitions of the built-in kinds the
dev API server serves, taken from published data instead of being written by hand.

Source: the Kubernetes v1.35.0 schemas that the PyPI package kubernetes-validate ships
(kubernetes-json-schema/v1.35.0-local/_definitions.json). Those are the `definitions` of the
official swagger.json of Kubernetes v1.35.0 (api/openapi-spec/swagger.json), put through
openapi2jsonschema, which changed them in three mechanical ways that this script undoes:
  - every optional field's `type: T` became `type: [T, "null"]`;
  - `$ref`s point at `#/$defs/...` instead of `#/definitions/...`;
  - the top-level kinds' `apiVersion` and `kind` got an `enum`; IntOrString and Quantity
    became `oneOf`s (the official document says `type: string`, `format: int-or-string`).
Only the definitions reachable from ROOTS are kept.

Usage: python3 refresh-openapi.py [path/to/_definitions.json]
Without a path it installs kubernetes-validate==1.37.0 into a temporary venv (PyPI).
"""
import json, os, subprocess, sys, tempfile

KUBERNETES_VALIDATE = "kubernetes-validate==1.37.0"
K8S = "v1.35.0"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "k8s-1.35-definitions.json")

# The kinds the fake serves (registry.rs), and the meta types its answers use.
ROOTS = [
    "io.k8s.api.core.v1." + k for k in [
        "Namespace", "ConfigMap", "Secret", "Service", "ServiceAccount", "Pod", "Endpoints", "Event",
        "PersistentVolumeClaim"]
] + [
    "io.k8s.api.apps.v1." + k for k in ["Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "ControllerRevision"]
] + [
    "io.k8s.api.batch.v1.Job", "io.k8s.api.batch.v1.CronJob",
    "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    "io.k8s.api.coordination.v1.Lease",
    "io.k8s.api.events.v1.Event",
    "io.k8s.api.rbac.v1.Role", "io.k8s.api.rbac.v1.RoleBinding",
    "io.k8s.api.rbac.v1.ClusterRole", "io.k8s.api.rbac.v1.ClusterRoleBinding",
    "io.k8s.api.networking.v1.NetworkPolicy", "io.k8s.api.networking.v1.Ingress",
    "io.k8s.api.networking.v1.IngressClass",
    "io.k8s.api.policy.v1.PodDisruptionBudget",
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    "io.k8s.api.authentication.v1.TokenRequest", "io.k8s.api.authentication.v1.SelfSubjectReview",
    "io.k8s.api.authorization.v1.SelfSubjectAccessReview", "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
    "io.k8s.api.authorization.v1.SubjectAccessReview",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status", "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch", "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList", "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroupList",
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIGroup", "io.k8s.apimachinery.pkg.apis.meta.v1.APIVersions",
    "io.k8s.apimachinery.pkg.version.Info",
]
# Lists of the served kinds (list responses).
ROOTS += [r + "List" for r in ROOTS if r.split(".")[-1] not in (
    "TokenRequest", "SelfSubjectReview", "SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview",
    "Status", "DeleteOptions", "Patch", "WatchEvent", "APIResourceList", "APIGroupList", "APIGroup", "APIVersions",
    "Info")]


def source_file():
    if len(sys.argv) > 1:
        return sys.argv[1]
    venv = tempfile.mkdtemp(prefix="kubernetes-validate-")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check",
                    KUBERNETES_VALIDATE], check=True)
    out = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                          "import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return os.path.join(out, "kubernetes-json-schema", K8S + "-local", "_definitions.json")


def undo(node, top_level_kind=False):
    if isinstance(node, list):
        return [undo(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str):
            out[k] = v.replace("#/$defs/", "#/definitions/")
        elif k == "type" and isinstance(v, list) and all(isinstance(t, str) for t in v):
            types = [t for t in v if t != "null"]
            out[k] = types[0] if len(types) == 1 else types
        elif k == "properties" and top_level_kind:
            props = {}
            for name, p in v.items():
                p = undo(p)
                if name in ("apiVersion", "kind"):
                    p.pop("enum", None)
                props[name] = p
            out[k] = props
        else:
            out[k] = undo(v)
    return out


def main():
    defs = json.load(open(source_file()))["$defs"]
    keep, todo = {}, [r for r in ROOTS if r in defs]
    missing = [r for r in ROOTS if r not in defs]
    if missing:
        sys.exit(f"not in the source: {missing}")
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        d = defs[name]
        keep[name] = d
        stack = [d]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                ref = x.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/$defs/"):
                    todo.append(ref[len("#/$defs/"):])
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
    out = {}
    for name in sorted(keep):
        d = undo(keep[name], top_level_kind="x-kubernetes-group-version-kind" in keep[name])
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
            d = {"description": "IntOrString is a type that can hold an int32 or a string.",
                 "format": "int-or-string", "type": "string"}
        elif name == "io.k8s.apimachinery.pkg.api.resource.Quantity":
            d = {"description": "Quantity is a fixed-point representation of a number.", "type": "string"}
        out[name] = d
    doc = {
        "x-source": f"Kubernetes {K8S} swagger.json definitions, via {KUBERNETES_VALIDATE} "
                    f"(kubernetes-json-schema/{K8S}-local/_definitions.json); regenerate with refresh-openapi.py",
        "definitions": out,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    print(f"{OUT}: {len(out)} definitions")


if __name__ == "__main__":
    main()
