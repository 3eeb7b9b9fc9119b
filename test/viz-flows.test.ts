/**
 * The datasets routes for flows and HYDRA sidecars: two flows built here by the real `nmoe data prep-mixture` (one
 * complete, one short of its quota) and a third not prepped, each answered as `nmoe data flow show --json` prints
 * it (one implementation: the same plan, plan_hash, quotas and tokens on disk); a sidecar in `grade`'s format,
 * counted and binned line by line, its half-written last line left out and a bad line refused with its number.
 */
import { appendFileSync, copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlowResponse, FlowsResponse, HydraSidecarResponse } from '../src/viz/api.ts';
import { type VizServer, startVizServer } from '../src/viz/server/server.ts';
import { nmoe, nmoeAsync, removeTempDirs, tempDir } from './fixtures/data/helpers.ts';
import { getJson } from './helpers/viz.ts';
import { FLOW_SEQ_LEN, type FlowFixture, SIDECAR_GRADES, flowFixture, writeSidecar } from './helpers/viz-data.ts';

const dir = tempDir('viz-flows');
const dataRoot = join(dir, 'data');
let fixture: FlowFixture;
let server: VizServer;
let bare: VizServer;

const get = <T>(path: string, on = server) => getJson<T>(on.url, path);

beforeAll(async () => {
  fixture = flowFixture(dir);
  for (const flow of ['tiny', 'huge']) {
    const r = nmoe(fixture.prepArgs(flow, dataRoot));
    expect(r.code, r.err).toBe(0);
  }
  writeSidecar(join(dataRoot, 'graded', 'web.jsonl'));
  const common = { metricsDir: dir, experimentsDb: join(dir, 'none.db'), dataRoot, host: '127.0.0.1', port: 0 };
  const { mixtureToml, flowProfilesToml } = fixture;
  server = await startVizServer({
    ...common,
    flowTomls: { mixtureToml, flowProfilesToml, seqLen: FLOW_SEQ_LEN, activeParamsB: null },
  });
  bare = await startVizServer(common);
}, 120_000);

afterAll(async () => {
  await server?.close();
  await bare?.close();
  removeTempDirs();
});

/** `nmoe data flow show --json` for `flow`: what the CLI computes for the same tree. */
function flowShow(flow: string) {
  const r = nmoe([
    'data',
    'flow',
    'show',
    fixture.mixtureToml,
    fixture.flowProfilesToml,
    '--flow',
    flow,
    '--seq-len',
    String(FLOW_SEQ_LEN),
    '--data-root',
    dataRoot,
    '--json',
  ]);
  expect(r.code, r.err).toBe(0);
  return JSON.parse(r.out) as {
    plan_hash: string;
    plan_id: string;
    stages: {
      stage: string;
      sources: {
        id: string;
        weight_fp: number;
        quota_sequences: number;
        quota_tokens: number;
        tokens: number;
        state: string;
      }[];
    }[];
  };
}

describe('flows on the datasets routes', () => {
  it('lists the flows on disk and those the flow-profiles TOML plans', async () => {
    const { status, body } = await get<FlowsResponse>('/api/datasets/flows');
    expect(status).toBe(200);
    expect(body.flows).toEqual([
      { name: 'huge', on_disk: true, planned: true },
      { name: 'tiny', on_disk: true, planned: true },
    ]);
    expect(body).toMatchObject({ mixture_toml: fixture.mixtureToml, seq_len: FLOW_SEQ_LEN });
    const without = await get<FlowsResponse>('/api/datasets/flows', bare);
    expect(without.body).toEqual({
      mixture_toml: null,
      flow_profiles_toml: null,
      seq_len: null,
      flows: [
        { name: 'huge', on_disk: true, planned: false },
        { name: 'tiny', on_disk: true, planned: false },
      ],
    });
  });

  it('gives each flow as `nmoe data flow show` does: plan_hash, weights, quotas, tokens on disk, states', async () => {
    for (const flow of ['tiny', 'huge']) {
      const { status, body } = await get<FlowResponse>(`/api/datasets/flow?flow=${flow}`);
      expect(status).toBe(200);
      const cli = flowShow(flow);
      expect(body.plan_hash).toBe(cli.plan_hash);
      expect(body.plan_id).toBe(cli.plan_id);
      expect(body.stages.map((s) => s.stage)).toEqual(cli.stages.map((s) => s.stage));
      expect(body.stages[0]!.sources).toEqual(
        cli.stages[0]!.sources.map((s) => ({
          id: s.id,
          weight: s.weight_fp / 1e6,
          quota_sequences: s.quota_sequences,
          quota_tokens: s.quota_tokens,
          tokens: s.tokens,
          shards: 1,
          tokenizers: ['bytes'],
          state: s.state,
          damage: null,
          path: `flows/${flow}/pretrain/${s.id}/train`,
        })),
      );
    }
    const tiny = (await get<FlowResponse>('/api/datasets/flow?flow=tiny')).body;
    expect(tiny.stages[0]!.sources.map((s) => [s.id, s.weight, s.quota_sequences, s.state])).toEqual([
      ['web', 0.75, 12, 'complete'],
      ['code', 0.25, 4, 'complete'],
    ]);
    const huge = (await get<FlowResponse>('/api/datasets/flow?flow=huge')).body;
    expect(huge.stages[0]!.sources.map((s) => s.state)).toEqual(['short', 'short']);
    for (const s of huge.stages[0]!.sources) expect(s.tokens).toBeLessThan(s.quota_tokens);
  });

  it('marks the sources of a flow not prepped yet as missing; refuses a flow the TOML lacks or a server without TOMLs', async () => {
    appendFileSync(
      fixture.flowProfilesToml,
      '[flow.later]\nmode = "dev"\nstages = ["pretrain"]\nscale = 0.000001\n[flow.later.mixture]\npretrain = "web_code"\n',
    );
    const later = await get<FlowResponse>('/api/datasets/flow?flow=later');
    expect(later.status).toBe(200);
    expect(later.body.stages[0]!.sources.map((s) => [s.state, s.tokens])).toEqual([
      ['missing', 0],
      ['missing', 0],
    ]);
    const unknown = await get<{ error: string }>('/api/datasets/flow?flow=nope');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toMatch(
      /flow nope is not in .*flows\.toml \(no \[flow\.nope\]\); its flows: tiny, huge, later/,
    );
    const none = await get<{ error: string }>('/api/datasets/flow?flow=tiny', bare);
    expect(none.status).toBe(404);
    expect(none.body.error).toMatch(/nmoe viz --mixture <mixture.toml> --flow-profiles <flow_profiles.toml>/);
  });
});

describe('HYDRA sidecars on the datasets routes', () => {
  it('counts the decisions and bins the aggregated and probe scores, leaving out a half-written last line', async () => {
    const { status, body } = await get<HydraSidecarResponse>('/api/datasets/hydra?path=graded/web.jsonl&bins=10');
    expect(status).toBe(200);
    expect(body).toEqual({
      path: 'graded/web.jsonl',
      documents: SIDECAR_GRADES.length,
      decisions: { keep: 4, band: 2, drop: 4 },
      early_drops: 3,
      // 0.1 | 0.4 0.4 | 0.8 0.8 0.8 | 1.0 (the last bin holds 1)
      aggregated: { bins: 10, counts: [0, 1, 0, 0, 2, 0, 0, 0, 3, 1] },
      // 0.1 | 0.2 0.25 | 0.5 | 0.6 | 0.7 | 0.9 0.9 0.95 0.99
      probe: { bins: 10, counts: [0, 1, 2, 0, 0, 1, 1, 1, 0, 4] },
    });
    const byDefault = (await get<HydraSidecarResponse>('/api/datasets/hydra?path=graded/web.jsonl')).body;
    expect(byDefault.aggregated.counts).toHaveLength(20);
    expect(byDefault.aggregated.counts.reduce((a, b) => a + b, 0)).toBe(7);
  });

  it('refuses a line that is not a grade, naming the file and the line; and a file that is not a .jsonl', async () => {
    const bad = join(dataRoot, 'graded', 'bad.jsonl');
    copyFileSync(join(dataRoot, 'graded', 'web.jsonl'), bad);
    appendFileSync(bad, `\n${JSON.stringify({ ...SIDECAR_GRADES[0], decision: 'maybe' })}\n`);
    appendFileSync(bad, `${JSON.stringify(SIDECAR_GRADES[1])}\n`);
    const r = await get<{ error: string }>('/api/datasets/hydra?path=graded/bad.jsonl');
    expect(r.status).toBe(422);
    expect(r.body.error).toMatch(/^graded\/bad\.jsonl:11 is not JSON: not a line of a HYDRA sidecar\. Fix: /);
    writeFileSync(bad, `${JSON.stringify({ ...SIDECAR_GRADES[0], decision: 'maybe' })}\n{}\n`);
    expect((await get<{ error: string }>('/api/datasets/hydra?path=graded/bad.jsonl')).body.error).toMatch(
      /bad\.jsonl:1 has decision "maybe", not keep, band or drop/,
    );
    const npy = await get<{ error: string }>('/api/datasets/hydra?path=flows/tiny/pretrain/web/train/manifest.json');
    expect(npy.status).toBe(400);
    expect(npy.body.error).toMatch(/is not a HYDRA sidecar/);
    const bins = await get<{ error: string }>('/api/datasets/hydra?path=graded/web.jsonl&bins=1');
    expect(bins.status).toBe(400);
  });
});

describe('nmoe viz --mixture --flow-profiles', () => {
  it('plans the flows from the TOMLs it is given, and refuses one without the other or a TOML it cannot read', async () => {
    const viz = nmoeAsync([
      'viz',
      '--metrics-dir',
      dir,
      '--data-root',
      dataRoot,
      '--mixture',
      fixture.mixtureToml,
      '--flow-profiles',
      fixture.flowProfilesToml,
      '--seq-len',
      String(FLOW_SEQ_LEN),
      '--port',
      '0',
    ]);
    let out = '';
    viz.child.stdout.on('data', (d) => (out += d));
    while (!/http:\/\/\S+/.test(out)) await new Promise((r) => setTimeout(r, 20));
    const url = /http:\/\/\S+/.exec(out)![0];
    const tiny = await getJson<FlowResponse>(url, '/api/datasets/flow?flow=tiny');
    expect(tiny.body.plan_hash).toBe(flowShow('tiny').plan_hash);
    viz.child.kill('SIGINT');
    expect((await viz.done).code).toBe(0);

    const alone = nmoe(['viz', '--metrics-dir', dir, '--mixture', fixture.mixtureToml]);
    expect(alone.code).toBe(2);
    expect(alone.err.trim()).toBe(
      'nmoe: error: --mixture was given alone. Fix: give both --mixture <mixture.toml> and --flow-profiles <flow_profiles.toml>, or neither.',
    );
    const missing = nmoe([
      'viz',
      '--metrics-dir',
      dir,
      '--mixture',
      join(dir, 'nope.toml'),
      '--flow-profiles',
      fixture.flowProfilesToml,
    ]);
    expect(missing.code).toBe(2);
    expect(missing.err.trim().split('\n')).toHaveLength(1);
    expect(missing.err).toMatch(/nope\.toml/);
  });
});
