/**
 * A small TCP key-value store, the meeting point of a distributed run: ranks publish keys (addresses, IPC handles,
 * counters) and wait for each other's before any faster channel exists. One server, hosted by node 0's
 * `nmoe launch` or by rank 0 (rendezvous.ts); one connection per process. The wire format is in store-protocol.ts.
 *
 * `get` waits on the server until its key exists, so waiting costs no polling; a `get` whose time runs out is
 * answered by the server too, which keeps the connection's requests and replies in step. The client keeps a deadline
 * of its own as well (the server's wait plus a grace period), so a server that never answers (something else
 * listening on the port, a host that froze) fails the call instead of hanging it.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { FrameReader, FrameSplitter, FrameWriter, Op, Status, keyId } from './store-protocol.ts';

export type StoreBytes = Uint8Array | string;

/**
 * unreachable: nothing answered at the address in time; timeout: a `get` waited in vain; closed: the connection
 * is gone; rejected: the server refused the request (an `add` on a key that holds no number); unresponsive: the
 * server accepted the request but never answered it.
 */
export type StoreErrorKind = 'unreachable' | 'timeout' | 'closed' | 'rejected' | 'unresponsive';

/** How long past its own wait a request may go unanswered: a live store answers at once. */
export const REPLY_GRACE_MS = 30_000;

export class StoreError extends Error {
  override name = 'StoreError';

  constructor(
    readonly kind: StoreErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** setTimeout fires at once past 2^31-1 ms, so longer waits (beyond 24 days) simply wait forever. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Waiter {
  socket: net.Socket;
  id: number;
  timer: NodeJS.Timeout | undefined;
}

export class StoreServer {
  readonly #server: net.Server;
  /** The port listened on: the one asked for, or the free one picked for port 0. */
  readonly port: number;
  readonly #values = new Map<string, Buffer>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  readonly #sockets = new Set<net.Socket>();

  private constructor(server: net.Server) {
    this.#server = server;
    this.port = (server.address() as net.AddressInfo).port;
    server.on('connection', (socket) => this.#serve(socket));
  }

  /** Port 0 picks a free port. Errors are Node's (EADDRINUSE, EACCES), for the caller to word. */
  static listen(host: string, port: number): Promise<StoreServer> {
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve(new StoreServer(server));
      });
    });
  }

  /** Stops listening and ends every connection; their pending calls fail with a `closed` StoreError. */
  close(): Promise<void> {
    for (const waiters of this.#waiters.values()) for (const w of waiters) clearTimeout(w.timer);
    this.#waiters.clear();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      for (const socket of this.#sockets) {
        socket.end(); // flushes replies already written, such as an abort notice
        setTimeout(() => socket.destroy(), 1000).unref(); // a peer that never acknowledges must not hold us up
      }
    });
  }

  #serve(socket: net.Socket): void {
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    const splitter = new FrameSplitter();
    socket.on('data', (chunk) => {
      try {
        for (const frame of splitter.push(chunk)) this.#handle(socket, new FrameReader(frame));
      } catch {
        socket.destroy(); // a peer speaking something else is cut off rather than answered
      }
    });
    socket.on('error', () => {}); // a peer that resets is its own problem; 'close' follows and cleans up
    socket.on('close', () => {
      this.#sockets.delete(socket);
      for (const waiters of this.#waiters.values()) {
        for (const w of waiters) {
          if (w.socket !== socket) continue;
          clearTimeout(w.timer);
          waiters.delete(w);
        }
      }
    });
  }

  #handle(socket: net.Socket, request: FrameReader): void {
    const op = request.u8();
    const id = request.u32();
    switch (op) {
      case Op.set: {
        const key = keyId(request.bytes());
        this.#put(key, Buffer.from(request.bytes())); // a copy: the frame may share memory with other frames
        return this.#reply(socket, id, Status.ok);
      }
      case Op.get: {
        const key = keyId(request.bytes());
        const timeoutMs = request.f64();
        const value = this.#values.get(key);
        if (value !== undefined) return this.#reply(socket, id, Status.ok, (w) => w.bytes(value));
        if (timeoutMs <= 0) return this.#reply(socket, id, Status.timeout);
        return this.#wait(key, { socket, id, timer: undefined }, timeoutMs);
      }
      case Op.add: {
        const key = keyId(request.bytes());
        const delta = request.f64();
        const text = this.#values.get(key)?.toString('latin1') ?? '0';
        const sum = /^-?\d+$/.test(text) ? Number(text) + delta : Number.NaN;
        if (!Number.isSafeInteger(sum)) {
          return this.#reply(socket, id, Status.error, (w) =>
            w.bytes(Buffer.from(`the key holds ${JSON.stringify(text.slice(0, 40))}, not a counter`)),
          );
        }
        this.#put(key, Buffer.from(String(sum), 'latin1')); // decimal text, so `get` reads a counter too
        return this.#reply(socket, id, Status.ok, (w) => w.f64(sum));
      }
      case Op.check: {
        let all = true;
        for (let n = request.u32(); n > 0; n--) all = this.#values.has(keyId(request.bytes())) && all;
        return this.#reply(socket, id, Status.ok, (w) => w.u8(all ? 1 : 0));
      }
      case Op.delete: {
        const existed = this.#values.delete(keyId(request.bytes()));
        return this.#reply(socket, id, Status.ok, (w) => w.u8(existed ? 1 : 0));
      }
      default:
        throw new RangeError(`unknown store op ${op}`);
    }
  }

  #wait(key: string, waiter: Waiter, timeoutMs: number): void {
    const waiters = this.#waiters.get(key) ?? new Set();
    this.#waiters.set(key, waiters);
    waiters.add(waiter);
    if (timeoutMs > MAX_TIMER_MS) return;
    waiter.timer = setTimeout(() => {
      waiters.delete(waiter);
      this.#reply(waiter.socket, waiter.id, Status.timeout);
    }, timeoutMs);
  }

  #put(key: string, value: Buffer): void {
    this.#values.set(key, value);
    const waiters = this.#waiters.get(key);
    if (!waiters) return;
    this.#waiters.delete(key);
    for (const w of waiters) {
      clearTimeout(w.timer);
      this.#reply(w.socket, w.id, Status.ok, (writer) => writer.bytes(value));
    }
  }

  #reply(socket: net.Socket, id: number, status: number, body?: (w: FrameWriter) => void): void {
    const w = new FrameWriter().u32(id).u8(status);
    body?.(w);
    socket.write(w.finish());
  }
}

export class StoreClient {
  readonly #conn: Connection;
  readonly #prefix: Buffer;

  private constructor(conn: Connection, prefix: Buffer) {
    this.#conn = conn;
    this.#prefix = prefix;
  }

  /** Retries until the server answers or `timeoutMs` passes: the server's host may start after its clients. */
  static async connect(
    host: string,
    port: number,
    { timeoutMs, replyGraceMs = REPLY_GRACE_MS }: { timeoutMs: number; replyGraceMs?: number },
  ): Promise<StoreClient> {
    return new StoreClient(await Connection.open(host, port, timeoutMs, replyGraceMs), Buffer.alloc(0));
  }

  /** `host:port` of the server. */
  get address(): string {
    return this.#conn.address;
  }

  /** The same connection seen through a key prefix: keys of one run stay apart from another's on one server. */
  scope(prefix: string): StoreClient {
    return new StoreClient(this.#conn, Buffer.concat([this.#prefix, Buffer.from(prefix)]));
  }

  async set(key: StoreBytes, value: StoreBytes): Promise<void> {
    await this.#conn.call(Op.set, `set ${describeKey(key)}`, (w) => w.bytes(this.#key(key)).bytes(bytesOf(value)));
  }

  /** The value of `key`, waiting until some client sets it; a `timeout` StoreError after `timeoutMs` (Infinity: forever). */
  async get(key: StoreBytes, timeoutMs: number): Promise<Uint8Array> {
    if (!(timeoutMs >= 0)) throw new RangeError(`store get ${describeKey(key)}: timeoutMs ${timeoutMs} must be >= 0`);
    const reply = await this.#conn.call(
      Op.get,
      `get ${describeKey(key)}`,
      (w) => w.bytes(this.#key(key)).f64(timeoutMs),
      timeoutMs,
    );
    if (reply.status === Status.timeout) {
      throw new StoreError(
        'timeout',
        `store key ${describeKey(key)} did not appear within ${timeoutMs / 1000} s (store ${this.address})`,
      );
    }
    return reply.body.bytes();
  }

  /** Adds `delta` to the counter at `key` (a missing key counts as 0) and returns the new value, atomically. */
  async add(key: StoreBytes, delta: number): Promise<number> {
    if (!Number.isSafeInteger(delta))
      throw new RangeError(`store add ${describeKey(key)}: delta ${delta} must be a whole number`);
    return (
      await this.#conn.call(Op.add, `add ${describeKey(key)}`, (w) => w.bytes(this.#key(key)).f64(delta))
    ).body.f64();
  }

  /** Whether every key in `keys` exists, without waiting. */
  async check(keys: StoreBytes[]): Promise<boolean> {
    const reply = await this.#conn.call(Op.check, `check ${keys.map(describeKey).join(', ')}`, (w) => {
      w.u32(keys.length);
      for (const key of keys) w.bytes(this.#key(key));
    });
    return reply.body.u8() === 1;
  }

  /** Removes `key`; whether it existed. */
  async delete(key: StoreBytes): Promise<boolean> {
    return (
      (await this.#conn.call(Op.delete, `delete ${describeKey(key)}`, (w) => w.bytes(this.#key(key)))).body.u8() === 1
    );
  }

  /** Closes the connection (shared by every scope of it); calls still pending fail with a `closed` StoreError. */
  close(): Promise<void> {
    return this.#conn.close();
  }

  #key(key: StoreBytes): Buffer {
    return Buffer.concat([this.#prefix, bytesOf(key)]);
  }
}

interface Pending {
  what: string;
  resolve(reply: { status: number; body: FrameReader }): void;
  reject(err: Error): void;
  /** The client-side deadline; once it has fired, a late reply is dropped. */
  timer: NodeJS.Timeout | undefined;
  expired: boolean;
}

/** One socket with its requests in flight, matched to replies by id. */
class Connection {
  readonly #socket: net.Socket;
  readonly #pending = new Map<number, Pending>();
  #nextId = 0;
  /** Why the connection is gone, once it is. */
  #gone: string | undefined;
  readonly #closed: Promise<void>;

  private constructor(
    socket: net.Socket,
    readonly address: string,
    readonly replyGraceMs: number,
  ) {
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    const splitter = new FrameSplitter();
    socket.on('data', (chunk) => {
      try {
        for (const frame of splitter.push(chunk)) this.#settle(new FrameReader(frame));
      } catch (err) {
        socket.destroy(err as Error);
      }
    });
    socket.on('error', (err) => {
      this.#gone ??= `broke (${describeSocketError(err)})`;
    });
    this.#closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.#gone ??= 'was closed by the server';
        for (const p of this.#pending.values()) {
          clearTimeout(p.timer);
          if (!p.expired) p.reject(this.#goneError(p.what));
        }
        this.#pending.clear();
        resolve();
      });
    });
  }

  static async open(host: string, port: number, timeoutMs: number, replyGraceMs: number): Promise<Connection> {
    const deadline = Date.now() + timeoutMs;
    for (let delayMs = 50; ; delayMs = Math.min(2 * delayMs, 1000)) {
      try {
        return new Connection(await dial(host, port, deadline - Date.now()), `${host}:${port}`, replyGraceMs);
      } catch (err) {
        const left = deadline - Date.now();
        if (left <= 0) {
          throw new StoreError(
            'unreachable',
            `no store answered at ${host}:${port} within ${timeoutMs / 1000} s (${describeSocketError(err as Error)})`,
          );
        }
        await sleep(Math.min(delayMs, left));
      }
    }
  }

  /** Sends one request; `waitMs` is how long the server itself may take (a `get`'s wait), the grace comes on top. */
  call(
    op: number,
    what: string,
    fields: (w: FrameWriter) => void,
    waitMs = 0,
  ): Promise<{ status: number; body: FrameReader }> {
    if (this.#gone !== undefined) return Promise.reject(this.#goneError(what));
    const id = this.#nextId;
    this.#nextId = (this.#nextId + 1) >>> 0;
    const w = new FrameWriter().u8(op).u32(id);
    fields(w);
    const frame = w.finish();
    return new Promise((resolve, reject) => {
      const pending: Pending = { what, resolve, reject, timer: undefined, expired: false };
      const limitMs = waitMs + this.replyGraceMs;
      if (limitMs <= MAX_TIMER_MS) {
        pending.timer = setTimeout(() => {
          pending.expired = true;
          reject(
            new StoreError(
              'unresponsive',
              `store ${what}: ${this.address} sent no answer within ${Math.round(limitMs / 1000)} s (a frozen host, or something other than an nmoe store listening there)`,
            ),
          );
        }, limitMs);
      }
      this.#pending.set(id, pending);
      this.#socket.write(frame);
    });
  }

  close(): Promise<void> {
    this.#gone ??= 'was closed by this process';
    this.#socket.end();
    return this.#closed;
  }

  #settle(reply: FrameReader): void {
    const id = reply.u32();
    const status = reply.u8();
    const pending = this.#pending.get(id);
    if (!pending) throw new RangeError(`store reply for unknown request ${id}`);
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (pending.expired) return; // its caller has been told already
    if (status === Status.error)
      pending.reject(new StoreError('rejected', `store ${pending.what} was refused: ${reply.bytes().toString()}`));
    else pending.resolve({ status, body: reply });
  }

  #goneError(what: string): StoreError {
    return new StoreError('closed', `store ${what} failed: the connection to ${this.address} ${this.#gone}`);
  }
}

function dial(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    // A firewall that drops packets leaves connect() hanging for minutes; the deadline is ours to keep.
    const timer = setTimeout(
      () => socket.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })),
      Math.max(timeoutMs, 1),
    );
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** ECONNREFUSED, ENOTFOUND…: the code says it best; connecting to both IPv4 and IPv6 fails with an empty message. */
function describeSocketError(err: Error): string {
  return (err as NodeJS.ErrnoException).code ?? (err.message || String(err));
}

function bytesOf(value: StoreBytes): Uint8Array {
  return typeof value === 'string' ? Buffer.from(value) : value;
}

function describeKey(key: StoreBytes): string {
  if (typeof key === 'string') return JSON.stringify(key);
  const hex = Buffer.from(key.buffer, key.byteOffset, key.length).toString('hex');
  return `0x${hex.length > 64 ? `${hex.slice(0, 64)}…` : hex}`;
}
