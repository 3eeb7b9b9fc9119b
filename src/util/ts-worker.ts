/**
 * Worker threads that run TypeScript modules. Module hooks do not cross threads, so the worker is started from a
 * small eval'd bootstrap that registers tsx's ESM hooks inside the new thread, then imports the module.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

function bootstrap(moduleUrl: URL): string {
  const require = createRequire(import.meta.url);
  const pkgPath = require.resolve('tsx/package.json');
  const api = (require(pkgPath) as { exports: Record<string, { import: { default: string } }> }).exports['./esm/api']!
    .import.default;
  const apiUrl = pathToFileURL(join(dirname(pkgPath), api)).href;
  return `import(${JSON.stringify(apiUrl)}).then((m) => { m.register(); return import(${JSON.stringify(moduleUrl.href)}); });`;
}

/** Starts a worker thread running the TypeScript module at `moduleUrl`. */
export function startTsWorker(moduleUrl: URL, opts: Omit<WorkerOptions, 'eval'> = {}): Worker {
  return new Worker(bootstrap(moduleUrl), { ...opts, eval: true });
}
