/**
 * The dashboard's HTTP app: the JSON API of src/viz/api.ts under /api and the web app everywhere else. Read-only by
 * construction: GET and HEAD only (anything else is a 405), and no route writes. Errors are `{error}` JSON with a
 * one-line message: 4xx for what the request got wrong (params.ts, paths.ts), 422 for a file nmoe cannot read
 * (the reader's message, with its fix), 500 for a bug, never with a stack trace (that goes to the server's stderr).
 */
import { Hono } from 'hono';
import { UserError } from '../../util/errors.ts';
import { datasetRoutes } from './dataset-routes.ts';
import { HttpError } from './errors.ts';
import type { FlowTomls } from './flows.ts';
import type { MetricsStore } from './metrics-store.ts';
import { metricsRoutes } from './metrics-routes.ts';
import type { RegistryReader } from './registry-read.ts';
import { registryRoutes } from './registry-routes.ts';
import { webBundle } from './static.ts';

export interface VizContext {
  store: MetricsStore;
  registry: RegistryReader;
  dataRoot: string;
  /** The TOMLs flows are planned from; null when the server was started without them. */
  flowTomls: FlowTomls | null;
}

const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost', '[::1]']);

export function createApp(ctx: VizContext, opts: { webRoot: string; loopbackOnly: boolean }): Hono {
  const app = new Hono();
  app.use('*', async (c, next) => {
    if (c.req.method !== 'GET' && c.req.method !== 'HEAD') {
      c.header('Allow', 'GET, HEAD');
      return c.json({ error: `${c.req.method} is not allowed: the dashboard only reads (GET, HEAD)` }, 405);
    }
    // Bound to loopback, the server answers only requests addressed to loopback: a page on another site that
    // points its own host name at 127.0.0.1 (DNS rebinding) is refused instead of reading your runs.
    const host = (c.req.header('host') ?? '').replace(/:\d+$/, '');
    if (opts.loopbackOnly && !LOOPBACK_NAMES.has(host)) {
      return c.json(
        { error: `Host ${JSON.stringify(host)} is not this server's: open it as 127.0.0.1 or localhost` },
        403,
      );
    }
    await next();
  });
  app.use('/api/*', async (c, next) => {
    await next();
    // Not the reference's max-age=2: a page that polls a live run asks the same URL again within seconds and must
    // see the rows written meanwhile. Repeats cost little: the server keeps answers until the run's files change.
    c.header('Cache-Control', 'no-cache');
  });
  app.get('/api/health', (c) => c.json({ ok: true }));
  metricsRoutes(app, ctx);
  registryRoutes(app, ctx);
  datasetRoutes(app, ctx);
  app.get('/api/*', (c) => c.json({ error: `no API route ${c.req.path} (see src/viz/api.ts for the routes)` }, 404));
  webBundle(app, opts.webRoot);
  app.onError((err, c) => {
    if (err instanceof HttpError) return c.json({ error: err.message }, err.status);
    if (err instanceof UserError) return c.json({ error: err.message }, 422);
    process.stderr.write(`nmoe viz: ${c.req.method} ${c.req.url}: ${(err as Error)?.stack ?? String(err)}\n`);
    return c.json({ error: `internal error: ${String((err as Error)?.message ?? err).split('\n')[0]}` }, 500);
  });
  return app;
}
