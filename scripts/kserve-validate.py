"""Validates rendered KServe objects (ServingRuntime, InferenceService) offline.

Usage: kserve-validate.py KSERVE_WHEEL MANIFESTS.yaml POD_OUT.yaml

The CRDs ship no schema that kubernetes-validate bundles, so the KServe objects are checked
against the KServe Python SDK's models, which are generated from KServe's OpenAPI document:
every field must be one the SDK knows (by its JSON name), of the declared kind (string, integer,
boolean, list, map or nested object), and the fields the SDK requires must be present. Values of
Kubernetes core types inside them (containers, volumes, image pull secrets, tolerations,
affinity, object metadata) are gathered into one Pod per object, written to POD_OUT.yaml for
kubernetes-validate's Kubernetes schemas. Prints what was checked; exits 1 naming each problem.
"""
import ast
import re
import sys
import zipfile

import yaml

ROOTS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}

# Where a Kubernetes core type goes in the Pod that kubernetes-validate checks.
POD_SLOTS = {
    "V1Container": ("spec", "containers"),
    "V1Volume": ("spec", "volumes"),
    "V1LocalObjectReference": ("spec", "imagePullSecrets"),
    "V1Toleration": ("spec", "tolerations"),
    "V1Affinity": ("spec", "affinity"),
    "V1ObjectMeta": ("metadata", None),
}
REQUIRED = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


def sdk_models(wheel):
    """Class name -> (openapi_types, attribute_map, required attributes) from the SDK's models."""
    models = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if not (name.startswith("kserve/models/") and name.endswith(".py")):
                continue
            source = z.read(name).decode()
            required = set(REQUIRED.findall(source))
            for node in ast.parse(source).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                found = {}
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                        if stmt.targets[0].id in ("openapi_types", "attribute_map"):
                            found[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                if "openapi_types" in found:
                    models[node.name] = (found["openapi_types"], found["attribute_map"], required)
    return models


class Checker:
    def __init__(self, models):
        self.models = models
        self.problems = []
        self.pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-check"}, "spec": {}}
        self.checked = 0

    def check(self, value, typ, path):
        self.checked += 1
        if typ == "str":
            ok = isinstance(value, str)
        elif typ == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif typ == "bool":
            ok = isinstance(value, bool)
        elif typ in ("object", "float"):
            ok = True
        elif typ.startswith("list["):
            ok = isinstance(value, list)
            if ok:
                for i, item in enumerate(value):
                    self.check(item, typ[5:-1], f"{path}[{i}]")
        elif typ.startswith("dict("):
            ok = isinstance(value, dict)
            if ok:
                inner = typ[typ.index(",") + 1 : -1].strip()
                for k, v in value.items():
                    self.check(v, inner, f"{path}.{k}")
        elif typ in self.models:
            ok = isinstance(value, dict)
            if ok:
                self.object(value, typ, path)
        elif typ in POD_SLOTS:
            ok = isinstance(value, dict)
            section, key = POD_SLOTS[typ]
            if ok and key is None:
                merged = dict(value)
                merged["name"] = "kserve-check"
                self.pod[section] = merged
            elif ok and typ == "V1Affinity":
                self.pod["spec"]["affinity"] = value
            elif ok:
                self.pod["spec"].setdefault(key, []).append(value)
        elif typ.startswith("V1"):
            # Another Kubernetes core type: its shape is Kubernetes', checked as a mapping here.
            ok = isinstance(value, dict)
        else:
            self.problems.append(f"{path}: unknown SDK type {typ}")
            return
        if not ok:
            self.problems.append(f"{path}: must be {typ}")

    def object(self, value, cls, path):
        types, names, required = self.models[cls]
        by_json = {json: attr for attr, json in names.items()}
        for key, v in value.items():
            attr = by_json.get(key)
            if attr is None:
                self.problems.append(f"{path}.{key}: not a field of {cls}")
            else:
                self.check(v, types[attr], f"{path}.{key}")
        for attr in required:
            if names.get(attr) not in value:
                self.problems.append(f"{path}: {cls} requires {names.get(attr)}")


def main():
    wheel, manifests, pod_out = sys.argv[1:]
    models = sdk_models(wheel)
    pods, problems, seen = [], [], []
    for doc in yaml.safe_load_all(open(manifests)):
        if not doc:
            continue
        root = ROOTS.get((doc.get("apiVersion"), doc.get("kind")))
        if root is None:
            continue
        checker = Checker(models)
        where = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        checker.object(doc, root, where)
        problems += checker.problems
        if not checker.pod["spec"].get("containers"):
            checker.pod["spec"]["containers"] = [{"name": "placeholder", "image": "placeholder"}]
        pods.append(checker.pod)
        seen.append(f"{where} ({checker.checked} values)")
    with open(pod_out, "w") as f:
        yaml.safe_dump_all(pods, f)
    if not seen:
        problems.append("no KServe object found")
    for p in problems:
        print(f"kserve-validate: {p}")
    if problems:
        sys.exit(1)
    print(f"kserve-validate: {', '.join(seen)} match the KServe SDK's models")


if __name__ == "__main__":
    main()
