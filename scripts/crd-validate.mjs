// Validates KEDA and Istio objects rendered by the Helm chart against their CRDs' schemas (the
// validators of the kubernetes-models npm packages, compiled from the CRDs' OpenAPI schemas).
// Usage: node crd-validate.mjs NODE_MODULES OBJECTS.json   (a JSON array of objects)
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [modules, file] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(file, "utf8"));
const packages = {
  "keda.sh/v1alpha1": "@kubernetes-models/keda/keda.sh/v1alpha1/index.js",
  "networking.istio.io/v1": "@kubernetes-models/istio/networking.istio.io/v1/index.js",
};
let failed = 0;
for (const o of objects) {
  const where = packages[o.apiVersion];
  const name = `${o.kind} ${o.metadata?.name}`;
  if (!where) {
    console.error(`crd-validate: ${name}: no schema for ${o.apiVersion}`);
    failed++;
    continue;
  }
  const models = await import(pathToFileURL(path.join(modules, where)).href);
  const Model = models[o.kind];
  if (!Model) {
    console.error(`crd-validate: ${name}: ${o.apiVersion} has no kind ${o.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(o).validate();
    console.log(`crd-validate: ${name} (${o.apiVersion}) ok`);
  } catch (e) {
    console.error(`crd-validate: ${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
