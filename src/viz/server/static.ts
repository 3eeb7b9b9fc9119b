/**
 * The web app (src/viz/web, built into viz-dist/ by `npm run build:viz`): its files at `/`, and index.html for every
 * other path outside /api, so the app's own routes (/runs/X, /router, /datasets, ...) load on a refresh. Without a
 * bundle, every page answers 500 with how to build it.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { serveStatic } from '@hono/node-server/serve-static';
import type { Hono, MiddlewareHandler } from 'hono';

/** Made on first use: serveStatic complains on the console when its root is missing at creation. */
function lazy(make: () => MiddlewareHandler): MiddlewareHandler {
  let handler: MiddlewareHandler | null = null;
  return (c, next) => (handler ??= make())(c, next);
}

export function webBundle(app: Hono, webRoot: string): void {
  const index = join(webRoot, 'index.html');
  app.get(
    '*',
    async (c, next) => {
      if (!existsSync(index)) {
        return c.json(
          {
            error: `the dashboard's web app is not built: ${index} is missing. Fix: run \`npm run build:viz\`, then reload.`,
          },
          500,
        );
      }
      c.header('Cache-Control', 'no-cache');
      await next();
    },
    lazy(() => serveStatic({ root: webRoot })),
    lazy(() => serveStatic({ root: webRoot, path: 'index.html' })),
  );
}
