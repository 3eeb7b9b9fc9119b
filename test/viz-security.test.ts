/**
 * What `nmoe viz` refuses or defuses: paths that leave their root (`..`, percent-encoded `..`, absolute paths,
 * symlinks out, NUL bytes), malformed and out-of-range numbers, too much in one request, methods other than
 * GET/HEAD, Host headers that are not loopback (DNS rebinding), unreadable files, files beside the web bundle, SQL
 * in a tag. Every refusal is 4xx JSON `{error}` with one line naming the problem, never a stack trace.
 */
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetricsWriter } from '../src/metrics/duckdb-writer.ts';
import { type VizServer, startVizServer } from '../src/viz/server/server.ts';
import { removeTempDirs, tempDir, writeNpy } from './fixtures/data/helpers.ts';
import { rawRequest } from './helpers/viz.ts';

const dir = tempDir('viz-security');
const outside = tempDir('viz-outside');
const metricsDir = join(dir, 'metrics');
const dataRoot = join(dir, 'data');
let server: VizServer;

beforeAll(async () => {
  const w = await MetricsWriter.open(metricsDir, 'run_ok', 0);
  for (let step = 1; step <= 3; step++) w.record(step, { 'train/loss': 1 / step });
  await w.close();
  mkdirSync(join(metricsDir, 'run_corrupt'));
  writeFileSync(join(metricsDir, 'run_corrupt', 'rank_0.duckdb'), 'not a database');
  writeFileSync(join(outside, 'secret.txt'), 'secret');
  writeNpy(join(outside, 'secret.npy'), Uint32Array.of(1, 2, 0));
  mkdirSync(join(outside, 'run_x'));
  symlinkSync(join(outside, 'run_x'), join(metricsDir, 'run_escape'));
  mkdirSync(dataRoot);
  writeNpy(join(dataRoot, 'shard.npy'), Uint32Array.of(5, 6, 0, 7, 0));
  symlinkSync(outside, join(dataRoot, 'escape'));
  symlinkSync(join(outside, 'secret.npy'), join(dataRoot, 'escape.npy'));
  writeFileSync(
    join(outside, 'secret.jsonl'),
    '{"id":"x","probe":0.5,"scores":null,"aggregated":null,"decision":"drop"}\n',
  );
  symlinkSync(join(outside, 'secret.jsonl'), join(dataRoot, 'escape.jsonl'));
  // Flows planned from TOMLs outside the data root (as the server is given them): `out` is a symlink out of the
  // root, `deep` a real folder whose source folder is one, and `leaky` real folders holding a shard that is one.
  const flow = (name: string) =>
    `[flow.${name}]\nmode = "dev"\nstages = ["pretrain"]\nscale = 0.000001\n[flow.${name}.mixture]\npretrain = "m"\n`;
  writeFileSync(
    join(dir, 'mix.toml'),
    '[mixtures.m]\ntotal_tokens_b = 1.0\n[[mixtures.m.sources]]\nid = "a"\ntokens_b = 1.0\n',
  );
  writeFileSync(join(dir, 'flows.toml'), flow('out') + flow('deep') + flow('leaky'));
  mkdirSync(join(dataRoot, 'flows', 'deep', 'pretrain', 'a'), { recursive: true });
  symlinkSync(outside, join(dataRoot, 'flows', 'out'));
  symlinkSync(outside, join(dataRoot, 'flows', 'deep', 'pretrain', 'a', 'train'));
  mkdirSync(join(dataRoot, 'flows', 'leaky', 'pretrain', 'a', 'train'), { recursive: true });
  writeNpy(join(outside, 'secret.npy'), Uint32Array.of(1, 2, 0));
  symlinkSync(join(outside, 'secret.npy'), join(dataRoot, 'flows', 'leaky', 'pretrain', 'a', 'train', 'x.npy'));
  // Siblings whose names start with the root's: "inside" must mean under `data/`, not any path starting "data".
  for (const [root, sibling] of [
    [dataRoot, `${dataRoot}-evil`],
    [metricsDir, `${metricsDir}-evil`],
  ] as const) {
    mkdirSync(join(sibling, 'run_y'), { recursive: true });
    writeNpy(join(sibling, 'secret.npy'), Uint32Array.of(1, 2, 0));
    symlinkSync(sibling, join(root, 'sibling'));
  }
  symlinkSync(join(`${metricsDir}-evil`, 'run_y'), join(metricsDir, 'run_sibling'));
  mkdirSync(join(dir, 'web'));
  writeFileSync(join(dir, 'web', 'index.html'), '<!doctype html><title>nmoe viz</title>');
  writeFileSync(join(dir, 'beside-the-bundle.txt'), 'not for the web');
  server = await startVizServer({
    metricsDir,
    experimentsDb: join(dir, 'none.db'),
    dataRoot,
    flowTomls: {
      mixtureToml: join(dir, 'mix.toml'),
      flowProfilesToml: join(dir, 'flows.toml'),
      seqLen: 32,
      activeParamsB: null,
    },
    host: '127.0.0.1',
    port: 0,
    webRoot: join(dir, 'web'),
  });
});

afterAll(async () => {
  await server?.close();
  removeTempDirs();
});

/** GETs `path` as sent (no URL normalisation) and checks the refusal's shape; returns its message. */
async function refused(
  path: string,
  status: number,
  opts: { method?: string; headers?: Record<string, string> } = {},
): Promise<string> {
  const r = await rawRequest(server.url, { path, ...opts });
  expect(r.status, `${path}: ${r.body}`).toBe(status);
  expect(r.headers['content-type'], path).toMatch(/^application\/json/);
  const body = JSON.parse(r.body) as { error: string };
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error, path).not.toMatch(/\n|\bat .*\(.*:\d+:\d+\)|node:internal/);
  return body.error;
}

describe('nmoe viz refuses', () => {
  it('paths that leave the data root: .., encoded .., absolute, symlinks out, NUL', async () => {
    const routes = [
      '/api/datasets?path=',
      '/api/datasets/manifest?path=',
      '/api/datasets/shard/stats?vocab_size=8&eos_token_id=0&path=',
      '/api/datasets/shard/window?path=',
      '/api/datasets/index/header?path=',
      '/api/datasets/index/doc?doc_idx=0&shard_path=',
      '/api/datasets/hydra?path=',
    ];
    for (const route of routes) {
      expect(await refused(`${route}..`, 400)).toMatch(/contains '\.\.'/);
      expect(await refused(`${route}a/../../x`, 400)).toMatch(/contains '\.\.'/);
      expect(await refused(`${route}%2e%2e%2f%2e%2e%2fetc%2fpasswd`, 400)).toMatch(/contains '\.\.'/);
      expect(await refused(`${route}%2Fetc%2Fpasswd`, 400)).toMatch(/is absolute/);
      expect(await refused(`${route}/etc/passwd`, 400)).toMatch(/is absolute/);
      expect(await refused(`${route}shard.npy%00.idx`, 400)).toMatch(/NUL byte/);
    }
    expect(await refused('/api/datasets?path=escape', 400)).toMatch(/leads outside the root .* through a symlink/);
    expect(await refused('/api/datasets/shard/window?path=escape.npy', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/datasets/shard/window?path=escape/secret.npy', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/datasets/shard/window?path=sibling/secret.npy', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/datasets?path=sibling', 400)).toMatch(/leads outside the root/);
    const listing = JSON.parse((await rawRequest(server.url, { path: '/api/datasets' })).body) as {
      entries: { name: string }[];
    };
    expect(listing.entries.map((e) => e.name)).toEqual(['flows', 'shard.npy']); // the symlinks out are not listed
    expect(await refused('/api/datasets?path=nothing/here', 404)).toMatch(/does not exist/);
  });

  it('flows and HYDRA sidecars outside the data root: flow names that are not folder names, symlinks out', async () => {
    for (const flow of ['..', '.', '..%2f..%2fetc', 'a%2fb', '%2Fetc', 'f%00x'])
      expect(await refused(`/api/datasets/flow?flow=${flow}`, 400), flow).toMatch(/not a flow name|NUL byte/);
    expect(await refused('/api/datasets/flow?flow=out', 400)).toMatch(/flow="flows\/out" leads outside the root/);
    expect(await refused('/api/datasets/flow?flow=deep', 400)).toMatch(
      /flow="flows\/deep\/pretrain\/a\/train" leads outside the root/,
    );
    // A shard that is a symlink is never read: the listing walks real files only, so nothing outside is counted.
    const leaky = JSON.parse((await rawRequest(server.url, { path: '/api/datasets/flow?flow=leaky' })).body);
    expect(leaky.stages[0].sources[0]).toMatchObject({ tokens: 0, shards: 0, state: 'missing' });
    const flows = JSON.parse((await rawRequest(server.url, { path: '/api/datasets/flows' })).body) as {
      flows: { name: string; on_disk: boolean }[];
    };
    // `out` is planned but its folder, leading out, is not counted as on disk.
    expect(flows.flows).toEqual([
      { name: 'deep', on_disk: true, planned: true },
      { name: 'leaky', on_disk: true, planned: true },
      { name: 'out', on_disk: false, planned: true },
    ]);
    expect(await refused('/api/datasets/hydra?path=escape.jsonl', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/datasets/hydra?path=escape/secret.jsonl', 400)).toMatch(/leads outside the root/);
  });

  it('run names that are not run directories, and runs that are unknown or lead outside', async () => {
    for (const run of ['..', '.', '..%2f..%2fetc', 'a%2fb', '%2Fetc', 'run%00x', 'r%20x']) {
      expect(await refused(`/api/summary?run=${run}`, 400), run).toMatch(/not a run name|NUL byte/);
    }
    expect(await refused('/api/series?run=..&tag=train/loss', 400)).toMatch(/not a run name/);
    expect(await refused('/api/summary?run=run_escape', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/summary?run=run_sibling', 400)).toMatch(/leads outside the root/);
    expect(await refused('/api/summary?run=run_nobody', 404)).toMatch(/run="run_nobody" does not exist/);
    expect(await refused('/api/summary', 400)).toMatch(/run is required/);
  });

  it('malformed, out-of-range and oversized numbers, naming the parameter, the value and the range', async () => {
    const cases: [string, RegExp][] = [
      [
        '/api/series?run=run_ok&tag=train/loss&points=abc',
        /^points="abc" is not an integer; allowed: an integer in 200\.\.5000 \(default 1000\)$/,
      ],
      ['/api/series?run=run_ok&tag=train/loss&points=1e3', /points="1e3" is not an integer/],
      ['/api/series?run=run_ok&tag=train/loss&points=2.5', /points="2\.5" is not an integer/],
      [
        '/api/series?run=run_ok&tag=train/loss&points=99999',
        /^points=99999 is out of range; allowed: an integer in 200\.\.5000/,
      ],
      [`/api/series?run=run_ok&tag=train/loss&points=${'9'.repeat(60)}`, /^points=9{40}\.\.\. is out of range/],
      [`/api/series?run=run_ok&tag=train/loss&points=${'x'.repeat(60)}`, /^points="x{40}\.\.\." is not an integer/],
      [
        '/api/series?run=run_ok&tag=train/loss&since_step=-5',
        /since_step=-5 is out of range; allowed: an integer in 0\.\.2147483647/,
      ],
      ['/api/router/heatmap?run=run_ok&points=5', /points=5 is out of range; allowed: an integer in 10\.\.2000/],
      [
        '/api/router/heatmap?run=run_ok&metric=loss',
        /metric="loss" is not one of cv, entropy, max_load, bias_range, experts_active/,
      ],
      ['/api/experiments/runs?limit=0', /limit=0 is out of range; allowed: an integer in 1\.\.2000/],
      ['/api/experiments/runs?limit=3000', /limit=3000 is out of range/],
      ['/api/datasets/shard/window?path=shard.npy&offset=-1', /offset=-1 is out of range/],
      [
        '/api/datasets/shard/window?path=shard.npy&length=5000',
        /length=5000 is out of range; allowed: an integer in 1\.\.4096/,
      ],
      [
        '/api/datasets/shard/window?path=shard.npy&offset=5',
        /offset=5 is out of range: the shard has 5 tokens \(offset 0\.\.4\)/,
      ],
      [
        '/api/datasets/shard/stats?path=shard.npy&vocab_size=8&eos_token_id=0&scan_tokens=3000000',
        /scan_tokens=3000000 is out of range; allowed: an integer in 1\.\.2000000/,
      ],
      ['/api/datasets/shard/stats?path=shard.npy', /pass vocab_size and eos_token_id/],
      [
        '/api/datasets/shard/stats?path=shard.npy&vocab_size=99999999&eos_token_id=0',
        /vocab_size=99999999 is out of range/,
      ],
      ['/api/datasets/index/doc?shard_path=shard.npy', /doc_idx is required/],
      ['/api/datasets/manifest?path=shard.npy&limit_shards=2001', /limit_shards=2001 is out of range/],
    ];
    for (const [path, message] of cases) expect(await refused(path, 400), path).toMatch(message);
    const runs = Array.from({ length: 11 }, () => 'run=run_ok').join('&');
    expect(await refused(`/api/series?${runs}&tag=train/loss`, 400)).toMatch(
      /11 values of run given; at most 10 per request/,
    );
    const tags = Array.from({ length: 21 }, (_, i) => `tag=t${i}`).join('&');
    expect(await refused(`/api/series?run=run_ok&${tags}`, 400)).toMatch(/21 values of tag given; at most 20/);
    expect(await refused(`/api/series?run=run_ok&tag=${'x'.repeat(300)}`, 400)).toMatch(/is not a tag/);
    // A tag is data, never SQL: this one simply has no rows.
    const injection = await rawRequest(server.url, {
      path: `/api/series?run=run_ok&tag=${encodeURIComponent("x'] , tag) OR true --")}&tag=train/loss`,
    });
    expect(JSON.parse(injection.body).series.map((s: { total: number }) => s.total)).toEqual([0, 3]);
    expect(await refused(`/api/experiments/run?run=${'x'.repeat(5000)}`, 400)).toMatch(
      /5000 characters long; at most 4096/,
    );
  });

  it('every method but GET and HEAD, Host headers that are not loopback, unknown routes and unreadable files', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      expect(await refused('/api/runs', 405, { method })).toBe(
        `${method} is not allowed: the dashboard only reads (GET, HEAD)`,
      );
      expect((await rawRequest(server.url, { path: '/', method })).headers.allow).toBe('GET, HEAD');
    }
    const head = await rawRequest(server.url, { path: '/api/health', method: 'HEAD' });
    expect([head.status, head.body]).toEqual([200, '']);
    expect(await refused('/api/runs', 403, { headers: { host: 'attacker.example:3000' } })).toMatch(
      /Host "attacker\.example" is not this server's/,
    );
    expect((await rawRequest(server.url, { path: '/api/health', headers: { host: 'localhost:1234' } })).status).toBe(
      200,
    );
    expect(await refused('/api/nothing', 404)).toMatch(/no API route \/api\/nothing/);
    expect(await refused('/api/summary?run=run_corrupt', 422)).toMatch(
      /cannot read the metrics file .*run_corrupt\/rank_0\.duckdb/,
    );
    // The runs list still answers: the unreadable run without numbers, the symlink out not at all.
    const runs = JSON.parse((await rawRequest(server.url, { path: '/api/runs' })).body) as {
      runs: { run: string; last_step: number | null }[];
    };
    expect(runs.runs.map((r) => [r.run, r.last_step])).toEqual([
      ['run_ok', 3],
      ['run_corrupt', null],
    ]);
  });

  it('files outside the web bundle', async () => {
    for (const path of [
      '/../beside-the-bundle.txt',
      '/%2e%2e/beside-the-bundle.txt',
      '/..%2fbeside-the-bundle.txt',
      '/%2e%2e%2fbeside-the-bundle.txt',
      '/../../../etc/passwd',
    ]) {
      const r = await rawRequest(server.url, { path });
      expect(r.body, path).not.toMatch(/not for the web|root:/);
      expect([200, 404], path).toContain(r.status);
    }
  });
});
