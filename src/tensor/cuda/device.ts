/**
 * The CUDA runtime nmoe needs, directly on the driver: one device, its primary context and one stream, the
 * caching allocator, pinned staging for copies, kernels compiled by NVRTC (a file's declared kernels loaded once,
 * each on-demand instance once), and a launcher that takes a launch's named arguments by its kernel table, writes
 * them into one preallocated block and hands cuLaunchKernel a preallocated array of pointers into it (no per-launch
 * allocation).
 */
import koffi from 'koffi';
import { UserError } from '../../util/errors.ts';
import { CachingAllocator } from './allocator.ts';
import {
  CU_DEVICE_ATTRIBUTE as A,
  CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
  check,
  cu,
  outI32,
  outU64,
} from './driver.ts';
import { GemmRunner } from './cublaslt.ts';
import { ARG_ALIGN, type KernelArg, packKernelArgs } from './kernel-args.ts';
import { type KernelArgs, type KernelFile, type KernelSpec, kernelArgs, moduleFor } from './kernel-table.ts';
import { compileKernels } from './nvrtc.ts';

/** Where a launch runs: template arguments (for a templated kernel), grid, threads per block, dynamic shared memory. */
export interface LaunchShape {
  template?: string;
  grid: [number, number?, number?];
  block: number;
  smem?: number;
}

const ARG_BYTES = 4096;
/** Kernel parameters per launch, at most (cuLaunchKernel's pointer array). */
const MAX_ARGS = 64;
const GEMM_WORKSPACE_BYTES = 32 << 20;
/** Uploads up to this size go through the ring of pinned slots below, without waiting for the stream. */
const UPLOAD_SLOT_BYTES = 16 << 20;
const UPLOAD_SLOTS = 4;
const CU_EVENT_DISABLE_TIMING = 2;

export interface DeviceInfo {
  ordinal: number;
  name: string;
  capability: [number, number];
  arch: string;
  multiprocessors: number;
  totalMemory: number;
}

let initialized = false;

export function deviceCount(): number {
  if (!initialized) {
    check('cuInit', cu.init(0));
    initialized = true;
  }
  return outI32('cuDeviceGetCount', cu.deviceGetCount);
}

export function deviceInfo(ordinal: number): DeviceInfo {
  deviceCount();
  const dev = outI32('cuDeviceGet', cu.deviceGet, ordinal);
  const name = Buffer.alloc(256);
  check('cuDeviceGetName', cu.deviceGetName(name, 256, dev));
  const attr = (a: number) => outI32('cuDeviceGetAttribute', cu.deviceGetAttribute, a, dev);
  const capability: [number, number] = [attr(A.COMPUTE_CAPABILITY_MAJOR), attr(A.COMPUTE_CAPABILITY_MINOR)];
  // Hopper gets its architecture-specific target (wgmma, setmaxnreg); others their plain one.
  const arch = capability[0] === 9 && capability[1] === 0 ? 'sm_90a' : `sm_${capability[0]}${capability[1]}`;
  return {
    ordinal,
    name: name.toString('utf8').replace(/\0.*$/s, ''),
    capability,
    arch,
    multiprocessors: attr(A.MULTIPROCESSOR_COUNT),
    totalMemory: Number(outU64('cuDeviceTotalMem', cu.deviceTotalMem, dev)),
  };
}

export class CudaDevice {
  readonly info: DeviceInfo;
  readonly stream: bigint;
  readonly allocator = new CachingAllocator();
  readonly gemm: GemmRunner;
  readonly #modules = new Map<string, { module: bigint; symbols: Record<string, string> }>();
  readonly #functions = new Map<string, bigint>();
  readonly #args: bigint;
  readonly #argView: DataView;
  /** cuLaunchKernel's kernelParams: MAX_ARGS pointers into #args. */
  readonly #argPointers: bigint;
  readonly #argPointerView: BigUint64Array;
  #staging: { ptr: bigint; bytes: number } | null = null;
  /** Pinned slots for small uploads (a step's token ids), each with the event of the copy that last read it. */
  readonly #uploadSlots: { ptr: bigint; done: bigint }[] = [];
  #nextUploadSlot = 0;
  /** The event waitForQueued() records and waits on, made on first use. */
  #marker: bigint | null = null;

  constructor(ordinal: number) {
    const count = deviceCount();
    if (ordinal >= count)
      throw new UserError(
        `GPU ${ordinal} does not exist: the driver reports ${count} device(s). Fix: set LOCAL_RANK or CUDA_VISIBLE_DEVICES.`,
      );
    this.info = deviceInfo(ordinal);
    const dev = outI32('cuDeviceGet', cu.deviceGet, ordinal);
    check('cuCtxSetCurrent', cu.ctxSetCurrent(outU64('cuDevicePrimaryCtxRetain', cu.primaryCtxRetain, dev)));
    this.stream = outU64('cuStreamCreate', cu.streamCreate, 0);
    const raw = koffi.alloc('uint8_t', ARG_BYTES + ARG_ALIGN) as bigint;
    this.#args = raw + ((BigInt(ARG_ALIGN) - (raw % BigInt(ARG_ALIGN))) % BigInt(ARG_ALIGN));
    this.#argView = new DataView(koffi.view(this.#args, ARG_BYTES));
    this.#argPointers = koffi.alloc('uint64_t', MAX_ARGS) as bigint;
    this.#argPointerView = new BigUint64Array(koffi.view(this.#argPointers, MAX_ARGS * 8));
    const workspace = this.allocator.alloc(GEMM_WORKSPACE_BYTES).ptr;
    this.gemm = new GemmRunner(workspace, GEMM_WORKSPACE_BYTES, this.stream);
  }

  /**
   * The function for kernel `name` of a table with template arguments `template`. A file's plain kernels and
   * declared instances compile together on the first launch from it; an on-demand instance compiles alone when a
   * launch first names it. Both are cached on disk (nvrtc.ts).
   */
  kernel(table: KernelFile, name: string, template: string | null): bigint {
    const { expression, key, names } = moduleFor(table, name, template);
    const cached = this.#functions.get(`${table.file}:${expression}`);
    if (cached !== undefined) return cached;
    let mod = this.#modules.get(key);
    if (!mod) {
      const compiled = compileKernels(table.file, names, this.info.arch);
      mod = { module: outU64('cuModuleLoadData', cu.moduleLoadData, compiled.cubin), symbols: compiled.symbols };
      this.#modules.set(key, mod);
    }
    const symbol = mod.symbols[expression];
    if (!symbol) throw new Error(`kernel ${expression} is not declared for ${table.file}`);
    const fn = outU64('cuModuleGetFunction', cu.moduleGetFunction, mod.module, symbol);
    this.#functions.set(`${table.file}:${expression}`, fn);
    return fn;
  }

  /** Launches kernel `name` of `table` with `args`, named as its table declares them, on the stream. */
  run<K extends Record<string, KernelSpec>, N extends keyof K & string>(
    table: KernelFile<K>,
    name: N,
    shape: LaunchShape,
    args: KernelArgs<K[N]>,
  ): void {
    const fn = this.kernel(table, name, shape.template ?? null);
    const packed = kernelArgs(name, table.kernels[name]!, args);
    const smem = shape.smem ?? 0;
    try {
      this.#launch(fn, shape.grid, shape.block, packed, smem);
    } catch (e) {
      const what = shape.template === undefined ? name : `${name}<${shape.template}>`;
      throw new Error(
        `launching ${what} (${table.file}) with grid [${shape.grid.join(', ')}], ${shape.block} threads, ${smem} B of dynamic shared memory: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  #launch(fn: bigint, grid: [number, number?, number?], block: number, args: readonly KernelArg[], smem: number): void {
    if (args.length > MAX_ARGS) throw new Error(`a kernel launch with ${args.length} arguments (at most ${MAX_ARGS})`);
    const offsets = packKernelArgs(this.#argView, args);
    for (let i = 0; i < offsets.length; i++) this.#argPointerView[i] = this.#args + BigInt(offsets[i]!);
    if ((grid[1] ?? 1) > 65535 || (grid[2] ?? 1) > 65535)
      throw new Error(
        `kernel grid [${grid.join(', ')}] has a y or z dimension over CUDA's 65535 (a batch too large for this kernel)`,
      );
    if (smem > 48 * 1024)
      check('cuFuncSetAttribute', cu.funcSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem));
    check(
      'cuLaunchKernel',
      cu.launchKernel(fn, grid[0], grid[1] ?? 1, grid[2] ?? 1, block, 1, 1, smem, this.stream, this.#argPointers, 0n),
    );
  }

  /** Pinned host memory of at least `bytes`, grown on demand (callers synchronize before reuse). */
  staging(bytes: number): { ptr: bigint; view: ArrayBuffer } {
    if (!this.#staging || this.#staging.bytes < bytes) {
      if (this.#staging) {
        this.synchronize(); // a copy still queued from the old buffer must finish before it is freed
        check('cuMemFreeHost', cu.memFreeHost(this.#staging.ptr));
      }
      const size = Math.max(bytes, 1 << 20);
      this.#staging = { ptr: outU64('cuMemHostAlloc', cu.memHostAlloc, size, 0), bytes: size };
    }
    return { ptr: this.#staging.ptr, view: koffi.view(this.#staging.ptr, bytes) };
  }

  /**
   * Queues a host-to-device copy of `bytes` to `dst` without waiting for the stream: small uploads (the next step's
   * tokens) take one of a ring of pinned slots, waiting only for the copy that last used that slot, so the host can
   * prepare step N+1 while step N runs. Larger ones (weights on resume) use the shared staging buffer after a sync.
   */
  uploadAsync(dst: bigint, bytes: Uint8Array): void {
    if (bytes.length > UPLOAD_SLOT_BYTES) {
      this.synchronize(); // the shared staging buffer may still feed an earlier copy
      const staging = this.staging(bytes.length);
      new Uint8Array(staging.view).set(bytes);
      check('cuMemcpyHtoDAsync', cu.memcpyHtoDAsync(dst, staging.ptr, bytes.length, this.stream));
      return;
    }
    if (this.#uploadSlots.length < UPLOAD_SLOTS) {
      this.#uploadSlots.push({
        ptr: outU64('cuMemHostAlloc', cu.memHostAlloc, UPLOAD_SLOT_BYTES, 0),
        done: outU64('cuEventCreate', cu.eventCreate, CU_EVENT_DISABLE_TIMING),
      });
    }
    const slot = this.#uploadSlots[this.#nextUploadSlot]!;
    this.#nextUploadSlot = (this.#nextUploadSlot + 1) % UPLOAD_SLOTS;
    check('cuEventSynchronize', cu.eventSynchronize(slot.done)); // an event never recorded is complete
    new Uint8Array(koffi.view(slot.ptr, bytes.length)).set(bytes);
    check('cuMemcpyHtoDAsync', cu.memcpyHtoDAsync(dst, slot.ptr, bytes.length, this.stream));
    check('cuEventRecord', cu.eventRecord(slot.done, this.stream));
  }

  synchronize(): void {
    check('cuStreamSynchronize', cu.streamSynchronize(this.stream));
  }

  /**
   * Waits for the work queued so far and not for what the host queues later: a read of step N's loss returns
   * once step N is done, while step N+1, already queued, keeps the GPU busy (cuStreamSynchronize would wait for it).
   */
  waitForQueued(): void {
    this.#marker ??= outU64('cuEventCreate', cu.eventCreate, CU_EVENT_DISABLE_TIMING);
    check('cuEventRecord', cu.eventRecord(this.#marker, this.stream));
    check('cuEventSynchronize', cu.eventSynchronize(this.#marker));
  }

  /** Records a new timing event on the stream. */
  event(): bigint {
    const ev = outU64('cuEventCreate', cu.eventCreate, 0);
    check('cuEventRecord', cu.eventRecord(ev, this.stream));
    return ev;
  }

  /** Marks a start on the stream; the returned function marks the end and returns a resolver of the ms between. */
  startTiming(): () => () => number {
    const start = this.event();
    return () => {
      const end = this.event();
      return () => this.elapsedMs(start, end);
    };
  }

  /** Milliseconds between two recorded events (waits for the later one), then releases both. */
  elapsedMs(start: bigint, end: bigint): number {
    check('cuEventSynchronize', cu.eventSynchronize(end));
    const ms = new Float32Array(1);
    check('cuEventElapsedTime', cu.eventElapsedTime(ms, start, end));
    cu.eventDestroy(start);
    cu.eventDestroy(end);
    return ms[0]!;
  }
}
