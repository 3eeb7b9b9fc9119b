/**
 * Rendezvous: every rank connects to the run's store and waits until all WORLD_SIZE ranks have arrived, so the
 * collectives built on the store start with a complete world — or the ranks stop with an error naming who is
 * missing, instead of hanging.
 *
 * Who hosts the store: under `nmoe launch` (NMOE_LAUNCH_STORE=1) node 0's launcher already does, at
 * MASTER_ADDR:MASTER_PORT; otherwise (torchrun, Kubernetes or Slurm starting `nmoe train` directly) rank 0 hosts
 * it in-process. Every key of a run lives under a generation id chosen by the store's host, and every rank
 * registers once, so a process left over from an earlier attempt is caught as a duplicate rank rather than
 * mixed into this one.
 */
import { randomUUID } from 'node:crypto';
import { UserError, positiveEnv } from '../util/errors.ts';
import type { DistEnv } from './env.ts';
import { StoreClient, StoreError } from './store.ts';
import { type HostedStore, hostStoreThread } from './store-thread.ts';

/** Set to 1 by `nmoe launch` in its ranks' environment: the launcher hosts the store. */
export const LAUNCH_STORE_ENV = 'NMOE_LAUNCH_STORE';
const DEFAULT_TIMEOUT_S = 300;
const GENERATION_KEY = 'nmoe/generation';
const LOOPBACK = '127.0.0.1';
const ALL_INTERFACES = '0.0.0.0';

export interface RendezvousOptions {
  /** How long to wait for the store and for every peer; default NMOE_RDZV_TIMEOUT_S, else 300 s. */
  timeoutMs?: number;
  /** Whether `nmoe launch` hosts the store; default: NMOE_LAUNCH_STORE=1 in this process's environment. */
  launcherHostsStore?: boolean;
}

export interface Rendezvous {
  /** The run's store; its keys are scoped to this run's generation. */
  store: StoreClient;
  /** The generation id every rank of this run shares (a UUID). */
  generation: string;
  /** Leaves the run. Call it once on every rank; where rank 0 hosts the store, it keeps it up until all have. */
  close(): Promise<void>;
  /** Leaves at once, without waiting for the others (this rank is failing; its peers may be dead). */
  abort(): Promise<void>;
}

/** NMOE_RDZV_TIMEOUT_S in milliseconds, default 300 s. */
export function rendezvousTimeoutMs(env: Record<string, string | undefined> = process.env): number {
  return positiveEnv('NMOE_RDZV_TIMEOUT_S', DEFAULT_TIMEOUT_S, 'seconds', env) * 1000;
}

export async function rendezvous(env: DistEnv, options: RendezvousOptions = {}): Promise<Rendezvous> {
  const timeoutMs = options.timeoutMs ?? rendezvousTimeoutMs();
  const launched = options.launcherHostsStore ?? process.env[LAUNCH_STORE_ENV] === '1';
  const deadline = Date.now() + timeoutMs;
  // A single process gets a private store on a free loopback port: two one-GPU runs on a host must not collide.
  const single = env.worldSize === 1;
  const hostHere = {
    bind: single ? LOOPBACK : ALL_INTERFACES,
    port: single ? 0 : env.masterPort,
    portLabel: `MASTER_PORT=${env.masterPort}`,
  };
  const run = await openRunStore({
    host: launched || env.rank !== 0 ? undefined : hostHere,
    remote: { addr: env.masterAddr, port: env.masterPort, hostedBy: launched ? "node 0's nmoe launch" : 'rank 0' },
    timeoutMs,
  });
  try {
    await register(run.store, env, Math.max(0, deadline - Date.now()), timeoutMs);
  } catch (err) {
    await run.close();
    throw err;
  }
  let leaving: Promise<void> | undefined;
  return {
    store: run.store,
    generation: run.generation,
    close: () => (leaving ??= leave(run, env.worldSize, timeoutMs)),
    abort: () => (leaving ??= run.close()),
  };
}

export interface StoreAccess {
  /** Host the store in this process, bound to `bind` and `port` (0: any free one); undefined: connect to `remote`. */
  host: { bind: string; port: number; portLabel: string } | undefined;
  /** Where the store is when another process hosts it, and words for that process (for errors). */
  remote: { addr: string; port: number; hostedBy: string };
  /** How long to wait for a remote store and for its generation. */
  timeoutMs: number;
}

export interface RunStore {
  /** The client, scoped to the run's generation. */
  store: StoreClient;
  generation: string;
  /** The server (on its own thread), when this process hosts it. */
  server: HostedStore | undefined;
  /** The port the store listens on (the free one picked for port 0). */
  port: number;
  /** Closes the client, then the server if hosted here. */
  close(): Promise<void>;
}

/**
 * Hosts the run's store or connects to it, and joins its generation: the host writes a fresh generation id,
 * everyone else reads it, and the client returned is scoped to it, so no key of another attempt on the same store
 * is ever read.
 */
export async function openRunStore(access: StoreAccess): Promise<RunStore> {
  const server = access.host ? await hostStore(access.host.bind, access.host.port, access.host.portLabel) : undefined;
  const port = server?.port ?? access.remote.port;
  const deadline = Date.now() + access.timeoutMs;
  let client: StoreClient | undefined;
  const close = async () => {
    await client?.close();
    await server?.close();
  };
  try {
    client = server
      ? await StoreClient.connect(LOOPBACK, port, { timeoutMs: access.timeoutMs })
      : await connectStore(access);
    let generation: string;
    if (server) {
      generation = randomUUID();
      await client.set(GENERATION_KEY, generation);
    } else {
      generation = Buffer.from(await client.get(GENERATION_KEY, Math.max(0, deadline - Date.now()))).toString();
    }
    return { store: client.scope(`${generation}/`), generation, server, port, close };
  } catch (err) {
    await close();
    // Something answered at the address but does not speak the store's protocol, or stopped answering.
    if (err instanceof StoreError && (err.kind === 'closed' || err.kind === 'unresponsive')) {
      throw new UserError(
        `${err.message}. Fix: check that MASTER_ADDR:MASTER_PORT (--master-addr/--master-port) is this run's store, hosted by node 0's \`nmoe launch\` or by rank 0.`,
      );
    }
    throw err;
  }
}

async function hostStore(bind: string, port: number, portLabel: string): Promise<HostedStore> {
  try {
    return await hostStoreThread(bind, port);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') {
      throw new UserError(
        `${portLabel} is already in use on this host (another run, or one still shutting down?). Fix: choose another port or stop that process.`,
      );
    }
    if (code === 'EACCES')
      throw new UserError(
        `${portLabel} needs privileges to open (ports below 1024). Fix: choose a port from 1024 to 65535.`,
      );
    throw err;
  }
}

async function connectStore({ remote, timeoutMs }: StoreAccess): Promise<StoreClient> {
  try {
    return await StoreClient.connect(remote.addr, remote.port, { timeoutMs });
  } catch (err) {
    if (!(err instanceof StoreError)) throw err;
    throw new UserError(
      `rendezvous: ${err.message}. Fix: check MASTER_ADDR and MASTER_PORT (--master-addr, --master-port), that ${remote.hostedBy} is running, ` +
        'and that the port is open between the nodes; NMOE_RDZV_TIMEOUT_S sets how long to wait.',
    );
  }
}

async function register(store: StoreClient, env: DistEnv, timeoutMs: number, fullTimeoutMs: number): Promise<void> {
  if ((await store.add(`rdzv/rank/${env.rank}`, 1)) > 1) {
    throw new UserError(
      `rendezvous: rank ${env.rank} arrived twice at the store ${store.address}: two processes have RANK=${env.rank}. ` +
        'Fix: give every node its own --node-rank (on Kubernetes, JOB_COMPLETION_INDEX) and stop any process left over from an earlier attempt.',
    );
  }
  // `rdzv/complete` holds "" once every rank is in, or the error of the first rank to give up, so the ranks that did
  // arrive all stop with the same message (rank 0 may close its store right after).
  if ((await store.add('rdzv/arrived', 1)) === env.worldSize) await store.set('rdzv/complete', '');
  const outcome = await store.get('rdzv/complete', timeoutMs).catch(async (err: unknown) => {
    if (!(err instanceof StoreError && err.kind === 'timeout')) throw err;
    const message = await missingRanks(store, env, fullTimeoutMs);
    await store.set('rdzv/complete', message);
    return Buffer.from(message);
  });
  const failure = Buffer.from(outcome).toString();
  if (failure) throw new UserError(failure);
}

async function missingRanks(store: StoreClient, env: DistEnv, timeoutMs: number): Promise<string> {
  const arrived = await Promise.all(Array.from({ length: env.worldSize }, (_, r) => store.check([`rdzv/rank/${r}`])));
  const missing = arrived.flatMap((here, r) => (here ? [] : [r]));
  const nodes = [...new Set(missing.map((r) => Math.floor(r / env.localWorldSize)))];
  return (
    `rendezvous: ${missing.length} of ${env.worldSize} ranks did not arrive within ${timeoutMs / 1000} s at the store ${store.address}: ` +
    `${plural('rank', missing)} ${ranges(missing)} (${plural('node', nodes)} ${ranges(nodes)}). ` +
    'Fix: check that those ranks started and did not fail (their logs), that every node uses the same WORLD_SIZE, MASTER_ADDR and MASTER_PORT ' +
    '(nmoe launch: --nnodes, --nproc-per-node, --master-addr, --master-port) with its own node rank, and that MASTER_PORT is reachable; ' +
    'NMOE_RDZV_TIMEOUT_S sets how long to wait.'
  );
}

/**
 * Every rank says it is leaving; the rank hosting the store keeps it up until all have, so no rank loses the
 * store in the middle of a call. Best effort: peers that died never say goodbye, and closing goes ahead anyway.
 */
async function leave(run: RunStore, worldSize: number, timeoutMs: number): Promise<void> {
  try {
    if ((await run.store.add('rdzv/left', 1)) === worldSize) await run.store.set('rdzv/all-left', '');
    if (run.server) await run.store.get('rdzv/all-left', timeoutMs);
  } catch (err) {
    if (!(err instanceof StoreError)) throw err;
  } finally {
    await run.close();
  }
}

function plural(word: string, items: unknown[]): string {
  return items.length === 1 ? word : `${word}s`;
}

/** Sorted whole numbers as ranges: [0, 1, 2, 5, 7, 8] → `0-2, 5, 7-8`. */
function ranges(sorted: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}
