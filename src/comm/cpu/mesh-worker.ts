/**
 * The CPU mesh's network thread (see mesh.ts). It owns one TCP connection to and one from every other rank and
 * moves the bytes of each exchange: the main thread posts one payload per rank and blocks; this thread writes them
 * out, waits for one payload from every rank, and hands them back through the sync port, then wakes the main thread
 * by bumping `signal[0]` to the exchange's sequence number. Connections carry length-prefixed frames in order, and
 * every rank runs the same exchanges in the same order, so the k-th frame from a rank belongs to the k-th exchange.
 *
 * Failures (a peer's connection drops, an exchange outlives the timeout) are posted instead of the result, with
 * `signal[1]` set, so the main thread raises them instead of hanging. A failing rank also sends its reason to every
 * peer before it goes, so when one rank dies the others all name it, even a rank that sees the second rank's
 * connection drop before the first's.
 *
 * Every frame's payload starts with one kind byte: DATA (an exchange's payload follows) or ABORT (a UTF-8 reason).
 */
import { type Server, type Socket, createConnection, createServer } from 'node:net';
import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { FrameSplitter } from '../store-protocol.ts';

export interface MeshWorkerData {
  rank: number;
  world: number;
  host: string;
  timeoutMs: number;
  signal: SharedArrayBuffer;
  sync: MessagePort;
}

/** Main thread -> worker, on the worker's parent port (setup) or the sync port (exchanges). */
export type MeshRequest =
  { kind: 'peers'; addrs: string[] } | { kind: 'exchange'; seq: number; sends: Uint8Array[] } | { kind: 'close' };
/** Worker -> main thread. */
export type MeshReply =
  | { kind: 'listening'; port: number }
  | { kind: 'ready' }
  | { kind: 'done'; seq: number; recvs: Uint8Array[] }
  | { kind: 'error'; message: string };

const data = workerData as MeshWorkerData;
const { rank, world, timeoutMs } = data;
const signal = new Int32Array(data.signal);

const DATA = 0;
const ABORT = 1;

/** The frames received from one peer, in order, each in its own ArrayBuffer (they are transferred). */
class FrameReader {
  readonly frames: Uint8Array[] = [];
  /** The peer's reason, once it has sent ABORT. */
  abort: string | null = null;
  readonly #splitter = new FrameSplitter(8, Number.MAX_SAFE_INTEGER); // a payload is a whole tensor: no cap

  push(chunk: Buffer): void {
    for (const frame of this.#splitter.push(chunk)) {
      if (frame[0] === ABORT) this.abort = frame.subarray(1).toString('utf8');
      else this.frames.push(new Uint8Array(frame.subarray(1))); // a copy, never a pool view
    }
  }
}

/** Writes one frame: the 8-byte length, the kind byte, the payload (three writes, so the payload is never copied). */
function writeFrame(sock: Socket, kind: number, payload: Uint8Array): void {
  const head = Buffer.alloc(9);
  head.writeBigUInt64LE(BigInt(payload.byteLength + 1));
  head[8] = kind;
  sock.write(head);
  sock.write(payload);
}

const outbound = new Map<number, Socket>();
const inbound = new Map<number, FrameReader>();
let pending: { seq: number; timer: NodeJS.Timeout } | null = null;
/** This rank's own payload of the pending exchange. */
let selfFrame: Uint8Array | null = null;
let failed = false;

function fail(message: string): void {
  if (failed) return;
  failed = true;
  if (pending) clearTimeout(pending.timer);
  if (!closing) for (const sock of outbound.values()) if (sock.writable) writeFrame(sock, ABORT, Buffer.from(message));
  data.sync.postMessage({ kind: 'error', message } satisfies MeshReply);
  parentPort!.postMessage({ kind: 'error', message } satisfies MeshReply);
  Atomics.store(signal, 1, 1);
  Atomics.notify(signal, 0);
}

/** Completes the pending exchange once every other rank's frame is in. */
function tryComplete(): void {
  if (!pending || failed) return;
  const waiting = [...inbound].filter(([, r]) => r.frames.length === 0).map(([j]) => j);
  if (waiting.length > 0 || inbound.size < world - 1) return;
  const recvs: Uint8Array[] = [];
  for (let j = 0; j < world; j++) recvs.push(j === rank ? selfFrame! : inbound.get(j)!.frames.shift()!);
  const { seq, timer } = pending;
  clearTimeout(timer);
  pending = null;
  selfFrame = null;
  data.sync.postMessage(
    { kind: 'done', seq, recvs } satisfies MeshReply,
    recvs.map((r) => r.buffer as ArrayBuffer),
  );
  Atomics.store(signal, 0, seq);
  Atomics.notify(signal, 0);
}

function exchange(seq: number, sends: Uint8Array[]): void {
  if (failed) return;
  const timer = setTimeout(() => {
    const missing = [...inbound].filter(([, r]) => r.frames.length === 0).map(([j]) => j);
    fail(
      `rank ${rank}: exchange ${seq} waited ${timeoutMs / 1000} s for rank(s) ${missing.join(', ')} (stuck or out of step?)`,
    );
  }, timeoutMs);
  pending = { seq, timer };
  for (let j = 0; j < world; j++) {
    const payload = sends[j]!;
    if (j === rank) {
      // A copy: the reply transfers (detaches) its buffers, and `payload`'s buffer may be the very one a socket
      // is still writing to another rank (a collective sends one payload to everybody).
      selfFrame = payload.slice();
      continue;
    }
    writeFrame(outbound.get(j)!, DATA, payload);
  }
  tryComplete();
}

function acceptInbound(server: Server): void {
  server.on('connection', (sock) => {
    sock.setNoDelay(true);
    let from = -1;
    let hello = Buffer.alloc(0);
    const reader = new FrameReader();
    sock.on('data', (chunk: Buffer) => {
      if (from < 0) {
        hello = Buffer.concat([hello, chunk]);
        if (hello.length < 4) return;
        from = hello.readUInt32LE(0);
        inbound.set(from, reader);
        chunk = hello.subarray(4);
        readyCheck();
      }
      if (chunk.length) reader.push(chunk);
      if (reader.abort !== null) fail(`rank ${rank}: rank ${from} stopped first: ${reader.abort}`);
      tryComplete();
    });
    sock.on('close', () => {
      if (from >= 0 && !closing) fail(`rank ${rank}: lost the connection from rank ${from} (did its process exit?)`);
    });
    sock.on('error', () => {});
  });
}

function connectOutbound(addrs: string[]): void {
  for (let j = 0; j < world; j++) {
    if (j === rank) continue;
    const [host, port] = [
      addrs[j]!.slice(0, addrs[j]!.lastIndexOf(':')),
      Number(addrs[j]!.slice(addrs[j]!.lastIndexOf(':') + 1)),
    ];
    const sock = createConnection({ host, port }, () => {
      const hello = Buffer.alloc(4);
      hello.writeUInt32LE(rank);
      sock.write(hello);
      outbound.set(j, sock);
      readyCheck();
    });
    sock.setNoDelay(true);
    const lost = () => {
      if (!closing) fail(`rank ${rank}: lost the connection to rank ${j} (did its process exit?)`);
    };
    sock.on('error', (err) =>
      outbound.has(j) ? lost() : fail(`rank ${rank}: cannot reach rank ${j} at ${addrs[j]}: ${err.message}`),
    );
    sock.on('close', lost);
  }
}

let announcedReady = false;
function readyCheck(): void {
  if (announcedReady || outbound.size < world - 1 || inbound.size < world - 1) return;
  announcedReady = true;
  parentPort!.postMessage({ kind: 'ready' } satisfies MeshReply);
}

let closing = false;
const server = createServer();
acceptInbound(server);
server.listen(0, data.host, () => {
  parentPort!.postMessage({ kind: 'listening', port: (server.address() as { port: number }).port } satisfies MeshReply);
});

parentPort!.on('message', (msg: MeshRequest) => {
  if (msg.kind === 'peers') {
    connectOutbound(msg.addrs);
    readyCheck();
  } else if (msg.kind === 'close') {
    closing = true;
    for (const s of outbound.values()) s.end();
    server.close();
    parentPort!.close();
    data.sync.close();
  }
});
data.sync.on('message', (msg: MeshRequest) => {
  if (msg.kind === 'exchange') exchange(msg.seq, msg.sends);
});
