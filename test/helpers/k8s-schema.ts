/**
 * Checks Kubernetes manifests against the Kubernetes API's own schemas, as `kubectl apply --validate=strict` would
 * before anything reaches a cluster: types, required fields and enums through kubernetes-models (its validators are
 * generated from the Kubernetes OpenAPI spec), and unknown fields, which those schemas allow but the API server's
 * strict field validation rejects.
 *
 * Unknown fields are found by watching the validator read: a generated validator looks up every property its schema
 * knows (and every key of a map), so a key it never reads is not in the schema. The checker's own test shows it
 * catching misspelled fields at several depths.
 */
import { readFileSync } from 'node:fs';
import { Deployment } from 'kubernetes-models/apps/v1';
import { Job } from 'kubernetes-models/batch/v1';
import { PersistentVolumeClaim, Service } from 'kubernetes-models/v1';
import { LineCounter, parseAllDocuments } from 'yaml';

/** The kinds nmoe's manifests use, by `apiVersion kind`; a manifest of any other kind is reported, not skipped. */
const MODELS: Record<string, { prototype: { validate(): void } }> = {
  'apps/v1 Deployment': Deployment,
  'batch/v1 Job': Job,
  'v1 PersistentVolumeClaim': PersistentVolumeClaim,
  'v1 Service': Service,
};

export type Manifest = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string } };

/** Every document of a YAML file; a syntax error names the file, line and column. */
export function loadManifests(path: string): Manifest[] {
  const lines = new LineCounter();
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { lineCounter: lines, prettyErrors: true });
  if (!Array.isArray(docs)) throw new Error(`${path}: not a YAML stream`);
  return docs.map((doc, i) => {
    const [error] = doc.errors;
    if (error)
      throw new Error(`${path}:${error.linePos?.[0].line ?? '?'}:${error.linePos?.[0].col ?? '?'}: ${error.message}`);
    const value: unknown = doc.toJS();
    if (value === null || typeof value !== 'object' || Array.isArray(value))
      throw new Error(`${path}: document ${i + 1} is not a mapping`);
    return value as Manifest;
  });
}

/** The manifest's problems, each one line naming the object and the field; none when it is valid. */
export function schemaProblems(manifest: Manifest): string[] {
  const what = `${manifest.kind}/${manifest.metadata?.name ?? '?'}`;
  const model = MODELS[`${manifest.apiVersion} ${manifest.kind}`];
  if (!model)
    return [
      `${what}: apiVersion ${manifest.apiVersion}, kind ${manifest.kind} has no schema here (add its kubernetes-models class to MODELS)`,
    ];
  const read = new Set<string>();
  const problems: string[] = [];
  try {
    // The model's validate() checks `this`, so it can check the watched object in place of a model instance.
    model.prototype.validate.call(watchReads(manifest, '', read));
  } catch (err) {
    const { errors } = err as { errors?: { instancePath: string; message?: string }[] };
    if (!errors) throw err;
    problems.push(
      ...errors.map((e) => `${what}: ${e.instancePath.slice(1) || '(the object)'} ${e.message ?? 'is invalid'}`),
    );
  }
  for (const path of unreadKeys(manifest, '', read))
    problems.push(`${what}: ${path.slice(1)} is not a field of the Kubernetes API`);
  return problems;
}

function watchReads(value: unknown, path: string, read: Set<string>): unknown {
  if (value === null || typeof value !== 'object') return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      const inner = Reflect.get(target, key, receiver);
      if (typeof key !== 'string' || !Object.hasOwn(target, key)) return inner;
      read.add(`${path}/${key}`);
      return watchReads(inner, `${path}/${key}`, read);
    },
  });
}

function unreadKeys(value: unknown, path: string, read: Set<string>): string[] {
  if (value === null || typeof value !== 'object') return [];
  return Object.entries(value).flatMap(([key, inner]) => {
    const at = `${path}/${key}`;
    return read.has(at) ? unreadKeys(inner, at, read) : [at];
  });
}
