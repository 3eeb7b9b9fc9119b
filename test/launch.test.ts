/**
 * The multi-process launcher and its rendezvous, with real processes and real TCP: the environment contract
 * (readDistEnv), the store, rendezvous with the launcher or rank 0 hosting the store, and `nmoe launch` end to
 * end — output, teardown on failure across nodes, signals. The ranks are CPU-only fixture entries
 * (test/fixtures/launch/) that report what they see into a temporary directory.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { type AddressInfo, createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type LaunchFlags, parseLaunchFlags } from '../src/cli/launch-cmd.ts';
import { type DistEnv, firstSlurmHost, readDistEnv } from '../src/comm/env.ts';
import { TERM_GRACE_MS } from '../src/launch/launch.ts';
import { rendezvous, rendezvousTimeoutMs } from '../src/comm/rendezvous.ts';
import { StoreClient, StoreError, StoreServer } from '../src/comm/store.ts';
import { UserError } from '../src/util/errors.ts';
import { BASE_ENV, freePort } from './helpers/ranks.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures/launch/', import.meta.url));

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
  ms: number;
  endedAt: number;
}

let out: string;
const started = new Set<ChildProcess>();

beforeEach(() => {
  out = mkdtempSync(join(tmpdir(), 'nmoe-launch-'));
});

afterEach(() => {
  // A failed test must not leave ranks behind: stop the processes it started and every rank that recorded its pid.
  for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  started.clear();
  for (const pid of rankPids()) if (alive(pid)) process.kill(pid, 'SIGKILL');
  rmSync(out, { recursive: true, force: true });
});

function run(argv: string[], env: Record<string, string>): { child: ChildProcess; finished: Promise<Finished> } {
  const t0 = Date.now();
  const child = spawn(argv[0]!, argv.slice(1), { env: { ...BASE_ENV, FIXTURE_OUT: out, ...env } });
  started.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const finished = new Promise<Finished>((resolve) =>
    child.on('close', (code, signal) =>
      resolve({ code, signal, out: stdout, err: stderr, ms: Date.now() - t0, endedAt: Date.now() }),
    ),
  );
  return { child, finished };
}

/** `nmoe launch …` as a user runs it. */
function nmoeLaunch(args: string[], env: Record<string, string> = {}) {
  return run([process.execPath, BIN, 'launch', ...args], env);
}

/** A fixture entry started directly with a torchrun-style environment: no launcher. */
function plainRank(fixture: string, env: Record<string, string>) {
  return run([process.execPath, '--import', 'tsx', join(FIXTURES, fixture)], env);
}

function entry(fixture: string): string[] {
  return ['--entry', join(FIXTURES, fixture)];
}

/** Node `rank` of a 2-node launch of the rank-worker fixture, `nproc` ranks on it, meeting at 127.0.0.1:`port`. */
function nodeLaunch(port: string, rank: number, env: Record<string, string>, nproc = '2') {
  return nmoeLaunch(
    [
      ...['--nproc-per-node', nproc, '--nnodes', '2', '--node-rank', String(rank)],
      ...['--master-addr', '127.0.0.1', '--master-port', port, ...entry('rank-worker.ts')],
    ],
    env,
  );
}

/** From the failing rank's last moment to the launcher's exit: the teardown, whatever start-up cost. */
function teardownMs(launcher: Finished): number {
  return launcher.endedAt - Number(readFileSync(join(out, 'failed-at'), 'utf8'));
}

function readJson<T>(name: string): T {
  return JSON.parse(readFileSync(join(out, name), 'utf8')) as T;
}

function rankPids(): number[] {
  if (!existsSync(out)) return [];
  return Array.from({ length: 8 }, (_, r) => join(out, `pid-${r}`))
    .filter(existsSync)
    .map((f) => Number(readFileSync(f, 'utf8')));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForFiles(names: string[], timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!names.every((n) => existsSync(join(out, n)))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${names.join(', ')} in ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('readDistEnv: the environment contract', () => {
  it('is a single process when nothing is set', () => {
    expect(readDistEnv({})).toEqual({
      rank: 0,
      worldSize: 1,
      localRank: 0,
      localWorldSize: 1,
      nodeRank: 0,
      nnodes: 1,
      masterAddr: '127.0.0.1',
      masterPort: 29500,
    });
  });

  it("reads torchrun's variables and derives the node", () => {
    const env = {
      RANK: '6',
      WORLD_SIZE: '8',
      LOCAL_RANK: '2',
      LOCAL_WORLD_SIZE: '4',
      MASTER_ADDR: '10.0.0.1',
      MASTER_PORT: '1234',
    };
    expect(readDistEnv(env)).toEqual({
      rank: 6,
      worldSize: 8,
      localRank: 2,
      localWorldSize: 4,
      nodeRank: 1,
      nnodes: 2,
      masterAddr: '10.0.0.1',
      masterPort: 1234,
    });
  });

  it("takes RANK and WORLD_SIZE alone (Kubeflow's PyTorchJob) as one process per node", () => {
    expect(readDistEnv({ RANK: '3', WORLD_SIZE: '4', MASTER_ADDR: 'master-0' })).toMatchObject({
      localRank: 0,
      localWorldSize: 1,
      nodeRank: 3,
      nnodes: 4,
      masterPort: 29500,
    });
  });

  it("maps Slurm's srun variables, the master being the first host of the step's node list", () => {
    const slurm = {
      SLURM_PROCID: '5',
      SLURM_STEP_NUM_TASKS: '8',
      SLURM_LOCALID: '1',
      SLURM_STEP_TASKS_PER_NODE: '4(x2)',
      SLURM_NODEID: '1',
      SLURM_STEP_NODELIST: 'gpu[01-02]',
      SLURM_JOB_NODELIST: 'gpu[01-04],gpu07',
    };
    expect(readDistEnv(slurm)).toEqual({
      rank: 5,
      worldSize: 8,
      localRank: 1,
      localWorldSize: 4,
      nodeRank: 1,
      nnodes: 2,
      masterAddr: 'gpu01',
      masterPort: 29500,
    });
    expect(readDistEnv({ ...slurm, SLURM_STEP_NODELIST: undefined, SLURM_JOB_NODELIST: 'n[3-4]' })).toMatchObject({
      masterAddr: 'n3',
    });
    expect(readDistEnv({ ...slurm, MASTER_ADDR: 'head', MASTER_PORT: '4000' })).toMatchObject({
      masterAddr: 'head',
      masterPort: 4000,
    });
    // The step's counts, not the job's: srun --preserve-env leaves SLURM_NTASKS and SLURM_TASKS_PER_NODE at the job's.
    expect(
      readDistEnv({ ...slurm, SLURM_NTASKS: '16', SLURM_TASKS_PER_NODE: '8(x2)', SLURM_NTASKS_PER_NODE: '8' }),
    ).toMatchObject({ worldSize: 8, localWorldSize: 4 });
    // torchrun's variables win: `nmoe launch` inside an srun allocation sets them for its ranks.
    expect(readDistEnv({ ...slurm, RANK: '0', WORLD_SIZE: '1' })).toMatchObject({ rank: 0, worldSize: 1 });
  });

  // What a batch script sees (src/common/env.c in Slurm: the batch step gets SLURM_PROCID/LOCALID/NODEID = 0 and the
  // job's counts, but only srun's step launch sets SLURM_STEP_*).
  const batchScript = {
    SLURM_JOB_ID: '4242',
    SLURM_PROCID: '0',
    SLURM_LOCALID: '0',
    SLURM_NODEID: '0',
    SLURM_JOB_NUM_NODES: '2',
    SLURM_NNODES: '2',
    SLURM_NTASKS: '16',
    SLURM_TASKS_PER_NODE: '8(x2)',
    SLURM_JOB_NODELIST: 'gpu[01-02]',
  };
  it('rejects a multi-node or multi-task batch script that runs nmoe train without srun, at once', () => {
    for (const env of [
      batchScript,
      { ...batchScript, SLURM_NTASKS: undefined },
      { ...batchScript, SLURM_JOB_NUM_NODES: '1', SLURM_NNODES: '1', SLURM_NTASKS: '8' },
    ]) {
      expect(() => readDistEnv(env)).toThrow(UserError);
      expect(() => readDistEnv(env)).toThrow(
        /^this process runs in the batch script of Slurm job 4242, not under srun .* Fix: start one `nmoe launch` per node with srun/,
      );
    }
    expect(() => readDistEnv(batchScript)).toThrow(
      'the job has SLURM_JOB_NUM_NODES=2, SLURM_NTASKS=16: the other ranks would never start',
    );
  });

  it('takes the batch script of a one-task, one-node job as a single process', () => {
    const single = {
      ...batchScript,
      SLURM_JOB_NUM_NODES: '1',
      SLURM_NNODES: '1',
      SLURM_NTASKS: '1',
      SLURM_TASKS_PER_NODE: '1',
      SLURM_JOB_NODELIST: 'gpu01',
    };
    expect(readDistEnv(single)).toEqual(readDistEnv({}));
    expect(readDistEnv({ ...single, SLURM_NTASKS: undefined })).toEqual(readDistEnv({}));
  });

  it('nmoe train in a 2-node batch script stops with that error and exit code 2 instead of waiting for the ranks', async () => {
    const train = run([process.execPath, BIN, 'train', '--device=cpu'], { ...batchScript, NMOE_RDZV_TIMEOUT_S: '300' });
    const r = await train.finished;
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^nmoe: error: this process runs in the batch script of Slurm job 4242, not under srun/);
    expect(r.ms).toBeLessThan(60_000); // the rendezvous would have waited 300 s
  });

  it('nmoe launch --nnodes 2 in a batch script is refused: the other nodes would get no launcher', () => {
    const plan = { nprocPerNode: '8', nnodes: '2', nodeRank: '0', masterAddr: 'gpu01', masterPort: '29500' };
    expect(() => parseLaunchFlags(plan, [], batchScript)).toThrow(
      /^--nnodes 2 in the batch script of Slurm job 4242, not under srun: .* Fix: .*srun --ntasks-per-node=1 nmoe launch/,
    );
    expect(parseLaunchFlags({ ...plan, nnodes: '1' }, [], batchScript)).toMatchObject({ nnodes: 1, nprocPerNode: 8 });
    expect(parseLaunchFlags(plan, [], { ...batchScript, SLURM_STEP_NUM_TASKS: '2' })).toMatchObject({ nnodes: 2 });
  });

  it('finds the first host of Slurm node lists', () => {
    expect(firstSlurmHost('gpu[01-04],gpu07')).toBe('gpu01');
    expect(firstSlurmHost('node7,node8')).toBe('node7');
    expect(firstSlurmHost('gpu[07,09-10]')).toBe('gpu07');
    expect(firstSlurmHost('rack[1-2]-n[3,5]')).toBe('rack1-n3');
    expect(firstSlurmHost('solo')).toBe('solo');
  });

  const full = { RANK: '0', WORLD_SIZE: '4', LOCAL_RANK: '0', LOCAL_WORLD_SIZE: '4', MASTER_ADDR: 'h' };
  const slurm = {
    SLURM_PROCID: '0',
    SLURM_STEP_NUM_TASKS: '4',
    SLURM_LOCALID: '0',
    SLURM_STEP_TASKS_PER_NODE: '4',
    SLURM_JOB_NODELIST: 'n1',
  };
  it.each([
    ['RANK without WORLD_SIZE', { RANK: '1' }, /^RANK=1 is set but WORLD_SIZE is not/],
    ['WORLD_SIZE without RANK', { WORLD_SIZE: '4' }, /^WORLD_SIZE=4 is set but RANK is not/],
    [
      'LOCAL_RANK without LOCAL_WORLD_SIZE',
      { ...full, LOCAL_WORLD_SIZE: undefined },
      /^LOCAL_RANK=0 is set but LOCAL_WORLD_SIZE is not/,
    ],
    [
      'local variables alone',
      { LOCAL_RANK: '0', LOCAL_WORLD_SIZE: '1' },
      /^LOCAL_RANK=0 is set but RANK and WORLD_SIZE are not/,
    ],
    ['a rank that is no number', { ...full, RANK: 'x' }, /^RANK="x" is not a whole number >= 0/],
    ['a negative rank', { ...full, RANK: '-1' }, /^RANK="-1" is not a whole number/],
    ['a fractional world', { ...full, WORLD_SIZE: '1.5' }, /^WORLD_SIZE="1.5" is not a whole number >= 1/],
    ['an empty world', { ...full, WORLD_SIZE: '0' }, /^WORLD_SIZE="0" is not a whole number >= 1/],
    ['a rank outside the world', { ...full, RANK: '4' }, /^RANK=4 must be < WORLD_SIZE \(4\)/],
    [
      'a world not divisible by the node size',
      { ...full, WORLD_SIZE: '6' },
      /^WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4/,
    ],
    ['a local rank outside the node', { ...full, LOCAL_RANK: '4' }, /^LOCAL_RANK=4 must be < LOCAL_WORLD_SIZE \(4\)/],
    [
      'ranks not numbered node by node',
      { ...full, WORLD_SIZE: '8', RANK: '5', LOCAL_RANK: '0' },
      /^LOCAL_RANK=0 does not match RANK=5: .* must be 1/,
    ],
    ['no master address', { ...full, MASTER_ADDR: undefined }, /^MASTER_ADDR is not set for a world of 4 processes/],
    ['a port out of range', { ...full, MASTER_PORT: '70000' }, /^MASTER_PORT="70000" is not a TCP port/],
    ['a port that is no number', { MASTER_PORT: 'http' }, /^MASTER_PORT="http" is not a TCP port/],
    [
      'Slurm without SLURM_LOCALID',
      { ...slurm, SLURM_LOCALID: undefined },
      /^SLURM_PROCID=0 is set but SLURM_LOCALID is not/,
    ],
    [
      'Slurm without tasks per node',
      { ...slurm, SLURM_STEP_TASKS_PER_NODE: undefined },
      /^SLURM_STEP_NUM_TASKS is set but SLURM_STEP_TASKS_PER_NODE is not/,
    ],
    [
      'Slurm with uneven nodes',
      { ...slurm, SLURM_STEP_TASKS_PER_NODE: '4(x2),3' },
      /^SLURM_STEP_TASKS_PER_NODE=4\(x2\),3 does not give every node the same/,
    ],
    [
      'Slurm ranks not in blocks',
      { ...slurm, SLURM_STEP_NUM_TASKS: '8', SLURM_PROCID: '1', SLURM_LOCALID: '1', SLURM_NODEID: '1' },
      /^SLURM_NODEID=1 does not match SLURM_PROCID=1/,
    ],
    ['Slurm with a bad local id', { ...slurm, SLURM_LOCALID: 'a' }, /^SLURM_LOCALID="a" is not a whole number/],
    [
      'Slurm without a node list or MASTER_ADDR',
      { ...slurm, SLURM_JOB_NODELIST: undefined },
      /^MASTER_ADDR is not set/,
    ],
  ])('rejects %s with one line naming the variable and the fix', (_, env, message) => {
    let error: unknown;
    try {
      readDistEnv(env);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(UserError);
    const text = (error as Error).message;
    expect(text).toMatch(message);
    expect(text).toMatch(/ Fix: /);
    expect(text).not.toContain('\n');
  });
});

describe('store', () => {
  let server: StoreServer;
  const clients: StoreClient[] = [];
  const connect = async () => {
    const c = await StoreClient.connect('127.0.0.1', server.port, { timeoutMs: 2000 });
    clients.push(c);
    return c;
  };

  beforeEach(async () => {
    server = await StoreServer.listen('127.0.0.1', 0);
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    await server.close();
  });

  it("lets one client wait for another's key", async () => {
    const [a, b] = [await connect(), await connect()];
    const waiting = a.get('greeting', 5000);
    await new Promise((r) => setTimeout(r, 100));
    await b.set('greeting', 'hello');
    expect(Buffer.from(await waiting).toString()).toBe('hello');
    expect(Buffer.from(await b.get('greeting', 0)).toString()).toBe('hello'); // present: no wait
  });

  it('keeps binary keys and multi-MB values intact', async () => {
    const [a, b] = [await connect(), await connect()];
    const key = Uint8Array.of(0, 255, 0, 10, 13);
    const value = new Uint8Array(4 * 2 ** 20).map((_, i) => (i * 2654435761) >>> 24);
    await a.set(key, value);
    expect(Buffer.from(await b.get(key, 1000)).equals(Buffer.from(value))).toBe(true);
    expect(await b.check([Uint8Array.of(0, 255, 0, 10)])).toBe(false); // a prefix is another key
  });

  it('adds atomically from many clients', async () => {
    const cs = await Promise.all(Array.from({ length: 4 }, connect));
    const results = await Promise.all(cs.flatMap((c) => Array.from({ length: 50 }, () => c.add('counter', 1))));
    expect(results.sort((x, y) => x - y)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    expect(Buffer.from(await cs[0]!.get('counter', 0)).toString()).toBe('200');
    expect(await cs[1]!.add('counter', -200)).toBe(0);
    await cs[2]!.set('text', 'abc');
    await expect(cs[2]!.add('text', 1)).rejects.toMatchObject({
      kind: 'rejected',
      message: /store add "text" was refused: the key holds "abc", not a counter/,
    });
  });

  it('checks and deletes keys', async () => {
    const c = await connect();
    await c.set('a', '1');
    expect(await c.check(['a', 'b'])).toBe(false);
    await c.set('b', '2');
    expect(await c.check(['a', 'b'])).toBe(true);
    expect(await c.delete('a')).toBe(true);
    expect(await c.delete('a')).toBe(false);
    expect(await c.check(['a'])).toBe(false);
  });

  it('times out a get, naming the key, and stays usable', async () => {
    const c = await connect();
    const t0 = Date.now();
    const err = await c.get('rdzv/never', 300).catch((e: unknown) => e);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(err).toBeInstanceOf(StoreError);
    expect(err).toMatchObject({
      kind: 'timeout',
      message: expect.stringMatching(/^store key "rdzv\/never" did not appear within 0\.3 s/),
    });
    await c.set('after', 'ok');
    expect(Buffer.from(await c.get('after', 0)).toString()).toBe('ok');
  });

  it('keeps scopes apart on one connection', async () => {
    const c = await connect();
    const [one, two] = [c.scope('run-1/'), c.scope('run-2/')];
    await one.set('k', 'one');
    await two.set('k', 'two');
    expect(Buffer.from(await one.get('k', 0)).toString()).toBe('one');
    expect(Buffer.from(await c.get('run-2/k', 0)).toString()).toBe('two');
  });

  it('retries connecting until a late server starts', async () => {
    const port = await freePort();
    const connecting = StoreClient.connect('127.0.0.1', port, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 300));
    const late = await StoreServer.listen('127.0.0.1', port);
    const c = await connecting;
    await c.set('k', 'v');
    await c.close();
    await late.close();
  });

  it('gives up connecting after its timeout, naming the address', async () => {
    const port = await freePort();
    const err = await StoreClient.connect('127.0.0.1', port, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      kind: 'unreachable',
      message: `no store answered at 127.0.0.1:${port} within 0.3 s (ECONNREFUSED)`,
    });
  });

  it('fails every pending call when the connection drops', async () => {
    const c = await connect();
    const pending = [c.get('a', Infinity), c.get(Uint8Array.of(1, 2), 60_000)].map((p) => p.catch((e: unknown) => e));
    await new Promise((r) => setTimeout(r, 50));
    await server.close();
    const [a, b] = await Promise.all(pending);
    expect(a).toMatchObject({
      kind: 'closed',
      message: `store get "a" failed: the connection to 127.0.0.1:${server.port} was closed by the server`,
    });
    expect(b).toMatchObject({
      kind: 'closed',
      message: expect.stringMatching(/^store get 0x0102 failed: the connection .* was closed by the server$/),
    });
    await expect(c.set('later', 'x')).rejects.toMatchObject({ kind: 'closed' });
  });

  it('fails a call that something listening on the port never answers, instead of hanging', async () => {
    const silent = createServer((socket) => socket.on('data', () => {})).listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const port = (silent.address() as AddressInfo).port;
    const c = await StoreClient.connect('127.0.0.1', port, { timeoutMs: 2000, replyGraceMs: 300 });
    try {
      const t0 = Date.now();
      await expect(c.set('k', 'v')).rejects.toMatchObject({
        kind: 'unresponsive',
        message: `store set "k": 127.0.0.1:${port} sent no answer within 0 s (a frozen host, or something other than an nmoe store listening there)`,
      });
      await expect(c.get('k', 400)).rejects.toMatchObject({ kind: 'unresponsive' }); // its own wait, then the grace
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      await c.close();
      silent.close();
    }
  });
});

describe('rendezvous', () => {
  it('takes its timeout from NMOE_RDZV_TIMEOUT_S, a positive number of seconds, default 300', () => {
    expect(rendezvousTimeoutMs({})).toBe(300_000);
    expect(rendezvousTimeoutMs({ NMOE_RDZV_TIMEOUT_S: '2.5' })).toBe(2500);
    for (const bad of ['0', '-1', 'abc', 'Infinity']) {
      expect(() => rendezvousTimeoutMs({ NMOE_RDZV_TIMEOUT_S: bad })).toThrow(
        new UserError(
          `NMOE_RDZV_TIMEOUT_S="${bad}" is not a positive number of seconds. Fix: e.g. NMOE_RDZV_TIMEOUT_S=600, or unset it (300).`,
        ),
      );
    }
  });

  const torchrun = (rank: number, world: number, port: number) => ({
    RANK: String(rank),
    WORLD_SIZE: String(world),
    MASTER_ADDR: '127.0.0.1',
    MASTER_PORT: String(port),
  });

  it('has rank 0 host the store when no launcher does, even when it starts last', async () => {
    const port = await freePort();
    const late = [1, 2].map((r) => plainRank('rendezvous.ts', torchrun(r, 3, port)));
    await new Promise((r) => setTimeout(r, 300));
    const ranks = [plainRank('rendezvous.ts', torchrun(0, 3, port)), ...late];
    for (const { finished } of ranks) expect((await finished).code, (await finished).err).toBe(0);
    const reports = [0, 1, 2].map((r) => readJson<{ generation: string; seen: string[] }>(`rdzv-${r}.json`));
    expect(new Set(reports.map((r) => r.generation)).size).toBe(1);
    for (const r of reports) expect(r.seen.map((s) => s.split(' pid')[0])).toEqual(['rank 0', 'rank 1', 'rank 2']);
  });

  it('names the missing rank when a peer never arrives', async () => {
    const port = await freePort();
    // 4 s, not 1: each rank's clock starts once its own imports are done, and on a loaded 2-core CI machine
    // rank 1 can boot a second after rank 0 and would then be reported missing too.
    const ranks = [0, 1].map((r) => plainRank('rendezvous.ts', { ...torchrun(r, 3, port), NMOE_RDZV_TIMEOUT_S: '4' }));
    for (const { finished } of ranks) {
      const r = await finished;
      expect(r.code).not.toBe(0);
      expect(r.ms).toBeLessThan(20_000);
      expect(r.err).toContain(
        `rendezvous: 1 of 3 ranks did not arrive within 4 s at the store 127.0.0.1:${port}: rank 2 (node 2). Fix: `,
      );
      expect(r.err).toContain('NMOE_RDZV_TIMEOUT_S');
    }
  });

  it('says plainly when MASTER_ADDR:MASTER_PORT is some other service', async () => {
    const http = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n')).listen(0, '127.0.0.1');
    await once(http, 'listening');
    const port = (http.address() as AddressInfo).port;
    try {
      await expect(rendezvous({ ...readDistEnv({ ...torchrun(1, 2, port) }) })).rejects.toThrow(
        new RegExp(
          `^store get "nmoe/generation" failed: the connection to 127\\.0\\.0\\.1:${port} (broke|was closed by the server).*Fix: check that MASTER_ADDR:MASTER_PORT`,
        ),
      );
    } finally {
      http.close();
    }
  });

  it('rejects a rank that arrives twice', async () => {
    // Rank 2 never comes, so the store stays up for the twins however slowly they start.
    const port = await freePort();
    const env = (rank: number) => ({ ...torchrun(rank, 3, port), NMOE_RDZV_TIMEOUT_S: '2' });
    const results = await Promise.all([0, 1, 1].map((rank) => plainRank('rendezvous.ts', env(rank)).finished));
    const twice = results.filter((r) =>
      /rendezvous: rank 1 arrived twice at the store 127\.0\.0\.1:\d+: two processes have RANK=1\. Fix: /.test(r.err),
    );
    expect(twice).toHaveLength(1);
  });

  it('gives a single process a private store', async () => {
    const env: DistEnv = readDistEnv({});
    const rdzv = await rendezvous(env, { launcherHostsStore: false, timeoutMs: 2000 });
    await rdzv.store.set('k', 'v');
    expect(Buffer.from(await rdzv.store.get('k', 0)).toString()).toBe('v');
    expect(rdzv.store.address).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(rdzv.store.address).not.toBe('127.0.0.1:29500');
    await rdzv.close();
  });
});

describe('nmoe launch', () => {
  it("gives every rank torchrun's environment and prefixes the output of all but rank 0", async () => {
    const r = await nmoeLaunch(
      ['--nproc-per-node', '3', '--master-port', '0', ...entry('print-env.ts'), '--', 'cfg.toml', '--steps=2'],
      { CUDA_VISIBLE_DEVICES: '4,5,6' },
    ).finished;
    expect(r.code, r.err).toBe(0);
    const reports = [0, 1, 2].map((rank) =>
      readJson<{ vars: Record<string, string>; dist: DistEnv; argv: string[] }>(`rank-${rank}.json`),
    );
    const port = reports[0]!.vars.MASTER_PORT!;
    expect(r.err).toMatch(new RegExp(`^nmoe launch: node 0 of 1: ranks 0-2 of 3, store 127\\.0\\.0\\.1:${port}$`, 'm'));
    for (const [rank, report] of reports.entries()) {
      expect(report.vars).toEqual({
        RANK: String(rank),
        WORLD_SIZE: '3',
        LOCAL_RANK: String(rank),
        LOCAL_WORLD_SIZE: '3',
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: port,
        NMOE_LAUNCH_STORE: '1',
        CUDA_VISIBLE_DEVICES: '4,5,6',
      });
      expect(report.dist).toEqual({
        rank,
        worldSize: 3,
        localRank: rank,
        localWorldSize: 3,
        nodeRank: 0,
        nnodes: 1,
        masterAddr: '127.0.0.1',
        masterPort: Number(port),
      });
      expect(report.argv).toEqual(['cfg.toml', '--steps=2']);
    }
    expect(r.out).toMatch(/^hello from rank 0$/m);
    expect(r.out).toMatch(/^\[rank 1\] hello from rank 1$/m);
    expect(r.out).toMatch(/^\[rank 2\] hello from rank 2$/m);
    expect(r.err).toMatch(/^note from rank 0$/m);
    expect(r.err).toMatch(/^\[rank 2\] note from rank 2$/m);
  });

  it('runs `nmoe train` with the given arguments by default', async () => {
    const r = await nmoeLaunch(['--nproc-per-node', '2', '--master-port', '0', '--', '--help']).finished;
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^Usage: nmoe train/m);
    expect(r.out).toMatch(/^\[rank 1\] Usage: nmoe train/m);
  });

  it('hosts the store the ranks rendezvous on', async () => {
    const r = await nmoeLaunch(['--nproc-per-node', '3', '--master-port', '0', ...entry('rendezvous.ts')]).finished;
    expect(r.code, r.err).toBe(0);
    const reports = [0, 1, 2].map((rank) => readJson<{ generation: string; seen: string[] }>(`rdzv-${rank}.json`));
    expect(new Set(reports.map((x) => x.generation)).size).toBe(1);
    for (const x of reports) expect(x.seen).toHaveLength(3);
  });

  it('stops every rank when one exits 1, and exits 1 saying which', async () => {
    const r = await nmoeLaunch(['--nproc-per-node', '4', '--master-port', '0', ...entry('rank-worker.ts')], {
      FIXTURE_FAIL_RANK: '3',
    }).finished;
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^\[rank 3\] rank 3 fails: exit 1$/m);
    expect(r.err).toMatch(/^nmoe launch: rank 3 \(pid \d+, node 0\) exited with code 1; stopping the other 3 ranks$/m);
    expect(teardownMs(r)).toBeLessThan(TERM_GRACE_MS); // SIGTERM was enough: no grace period spent
    expect(rankPids()).toHaveLength(4);
    expect(rankPids().filter(alive)).toEqual([]);
  });

  it('reports a rank killed by SIGKILL with 137, and SIGKILLs a rank that ignores SIGTERM after the grace period', async () => {
    const env = { FIXTURE_FAIL_RANK: '0', FIXTURE_FAIL_WITH: 'kill:SIGKILL', FIXTURE_ON_SIGNAL: 'ignore' };
    const r = await nmoeLaunch(['--nproc-per-node', '3', '--master-port', '0', ...entry('rank-worker.ts')], env)
      .finished;
    expect(r.code).toBe(137);
    expect(r.err).toMatch(
      /^nmoe launch: rank 0 \(pid \d+, node 0\) was killed by SIGKILL; stopping the other 2 ranks$/m,
    );
    expect(teardownMs(r)).toBeGreaterThanOrEqual(TERM_GRACE_MS);
    expect(teardownMs(r)).toBeLessThan(TERM_GRACE_MS + 3000);
    expect(rankPids().filter(alive)).toEqual([]);
  });

  it("stops node 0's ranks when a rank on node 1 fails", async () => {
    const port = String(await freePort());
    const node = (rank: number) => nodeLaunch(port, rank, { FIXTURE_FAIL_RANK: '3', FIXTURE_FAIL_WITH: 'exit:7' });
    const [node1, node0] = [node(1), node(0)]; // node 1 first: its launcher waits for node 0's store
    const [r0, r1] = await Promise.all([node0.finished, node1.finished]);
    expect(r1.code).toBe(7);
    expect(r1.err).toMatch(/^nmoe launch: rank 3 \(pid \d+, node 1\) exited with code 7; stopping the other 3 ranks$/m);
    expect(r0.code).toBe(7);
    expect(r0.err).toMatch(
      /^nmoe launch: rank 3 \(pid \d+, node 1\) exited with code 7; stopping the 2 ranks of node 0$/m,
    );
    expect(Math.max(teardownMs(r0), teardownMs(r1))).toBeLessThan(TERM_GRACE_MS);
    expect(rankPids()).toHaveLength(4);
    expect(rankPids().filter(alive)).toEqual([]);
  });

  it("forwards Ctrl-C to every node's ranks, which stop cleanly", async () => {
    const port = String(await freePort());
    const node = (rank: number) => nodeLaunch(port, rank, { FIXTURE_ON_SIGNAL: 'stop' });
    const [node0, node1] = [node(0), node(1)];
    await waitForFiles([0, 1, 2, 3].map((r) => `pid-${r}`));
    node0.child.kill('SIGINT');
    const [r0, r1] = await Promise.all([node0.finished, node1.finished]);
    expect([r0.code, r1.code], r0.err + r1.err).toEqual([0, 0]);
    expect(r0.err).toMatch(/^nmoe launch: SIGINT: asking the 2 ranks of node 0 to stop after the step in flight/m);
    expect(r1.err).toMatch(/^nmoe launch: node 0 got SIGINT: asking the 2 ranks of node 1 to stop/m);
    for (const r of [0, 1, 2, 3]) expect(readFileSync(join(out, `stopped-${r}`), 'utf8')).toBe('SIGINT');
  });

  it('kills the ranks on a second SIGTERM', async () => {
    const launcher = nmoeLaunch(['--nproc-per-node', '2', '--master-port', '0', ...entry('rank-worker.ts')], {
      FIXTURE_ON_SIGNAL: 'ignore',
    });
    await waitForFiles(['pid-0', 'pid-1']);
    launcher.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    launcher.child.kill('SIGTERM');
    const r = await launcher.finished;
    expect(r.code).toBe(137);
    expect(r.err).toMatch(/^nmoe launch: SIGTERM again: killing the 2 ranks of node 0$/m);
    expect(rankPids().filter(alive)).toEqual([]);
  });

  it('stops every node when one was started with a different shape', async () => {
    const port = String(await freePort());
    const node = (rank: number, nproc: string) => nodeLaunch(port, rank, { NMOE_RDZV_TIMEOUT_S: '20' }, nproc);
    const [r0, r1] = await Promise.all([node(0, '2').finished, node(1, '1').finished]);
    const reason =
      'node 1 was started with --nnodes 2 --nproc-per-node 1 but node 0 with --nnodes 2 --nproc-per-node 2';
    expect(r1.code).toBe(2);
    expect(r1.err.trim()).toBe(
      `nmoe: error: ${reason}. Fix: start every node with the same --nnodes and --nproc-per-node.`,
    );
    expect(r0.code).toBe(2);
    expect(r0.err).toContain(`nmoe launch: ${reason}`);
    expect(rankPids().filter(alive)).toEqual([]);
  });

  const flags = (f: Partial<LaunchFlags>): LaunchFlags => ({
    nprocPerNode: '2',
    nnodes: '1',
    nodeRank: '0',
    masterPort: '29500',
    ...f,
  });
  it.each([
    [{ nprocPerNode: undefined }, /^--nproc-per-node is required/],
    [{ nprocPerNode: '0' }, /^--nproc-per-node 0 is not a whole number >= 1/],
    [{ nprocPerNode: 'eight' }, /^--nproc-per-node eight is not a whole number >= 1/],
    [{ nnodes: '0' }, /^--nnodes 0 is not a whole number >= 1/],
    [
      { nnodes: '2', nodeRank: '2', masterAddr: 'h' },
      /^--node-rank 2 must be < --nnodes \(2\)\. Fix: number the nodes from 0 to 1/,
    ],
    [{ masterPort: '70000' }, /^--master-port 70000 is not a TCP port/],
    [{ masterPort: '-1' }, /^--master-port -1 is not a whole number >= 0/],
    [
      { nnodes: '2', masterAddr: 'h', masterPort: '0' },
      /^--master-port 0 \(any free port\) works only with --nnodes 1/,
    ],
    [{ nnodes: '2' }, /^--master-addr is required with --nnodes 2/],
    [{ entry: 'no/such/module.ts' }, /^--entry no\/such\/module\.ts does not exist/],
  ])('rejects bad flags %o with one line naming the flag and the fix', (f, message) => {
    expect(() => parseLaunchFlags(flags(f), [])).toThrow(UserError);
    expect(() => parseLaunchFlags(flags(f), [])).toThrow(message);
    expect(() => parseLaunchFlags(flags(f), [])).toThrow(/ Fix: /);
  });

  it('exits 2 with one line on a bad flag, and describes itself in --help', async () => {
    const bad = await nmoeLaunch(['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '3']).finished;
    expect(bad.code).toBe(2);
    expect(bad.err.trim().split('\n')).toEqual([
      'nmoe: error: --node-rank 3 must be < --nnodes (2). Fix: number the nodes from 0 to 1.',
    ]);
    const help = await nmoeLaunch(['--help']).finished;
    expect(help.code).toBe(0);
    for (const topic of [
      '--nproc-per-node',
      '--node-rank',
      '--entry',
      'LOCAL_RANK',
      'NMOE_RDZV_TIMEOUT_S',
      'SIGKILL',
      'Exit codes',
      'JOB_COMPLETION_INDEX',
    ])
      expect(help.out).toContain(topic);
  });
});
