/**
 * CUDA driver API bindings (libcuda), only the symbols nmoe uses. Handles and device pointers are passed as
 * uint64 (BigInt); every call goes through `check`, which throws a CudaError naming the call and the driver's own
 * error name and text.
 */
import koffi from 'koffi';
import { LIBRARIES, loadLibrary } from './libraries.ts';

export class CudaError extends Error {
  override name = 'CudaError';
  constructor(
    readonly api: string,
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const { lib, path } = loadLibrary(LIBRARIES.cuda);

/** An IPC handle to device memory: 64 opaque bytes, passed by value to cuIpcOpenMemHandle. */
export const IPC_HANDLE_BYTES = 64;
koffi.struct('CUipcMemHandle', { reserved: koffi.array('uint8_t', IPC_HANDLE_BYTES) });
/** cuIpcOpenMemHandle: enable peer access on demand. */
export const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1;

const f = (sig: string) => lib.func(sig);
/** A function that drivers before some version lack: null there instead of failing the whole binding. */
const optional = (sig: string) => {
  try {
    return lib.func(sig);
  } catch {
    return null;
  }
};
export const cu = {
  path,
  init: f('int cuInit(unsigned int flags)'),
  driverGetVersion: f('int cuDriverGetVersion(_Out_ int *version)'),
  deviceGetCount: f('int cuDeviceGetCount(_Out_ int *count)'),
  deviceGet: f('int cuDeviceGet(_Out_ int *device, int ordinal)'),
  deviceGetName: f('int cuDeviceGetName(_Out_ uint8_t *name, int len, int dev)'),
  deviceGetAttribute: f('int cuDeviceGetAttribute(_Out_ int *value, int attrib, int dev)'),
  deviceTotalMem: f('int cuDeviceTotalMem_v2(_Out_ uint64_t *bytes, int dev)'),
  deviceCanAccessPeer: f('int cuDeviceCanAccessPeer(_Out_ int *can, int dev, int peer)'),
  primaryCtxRetain: f('int cuDevicePrimaryCtxRetain(_Out_ uint64_t *ctx, int dev)'),
  ctxSetCurrent: f('int cuCtxSetCurrent(uint64_t ctx)'),
  ctxSynchronize: f('int cuCtxSynchronize()'),
  memAlloc: f('int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)'),
  memFree: f('int cuMemFree_v2(uint64_t dptr)'),
  memGetInfo: f('int cuMemGetInfo_v2(_Out_ uint64_t *free, _Out_ uint64_t *total)'),
  memHostAlloc: f('int cuMemHostAlloc(_Out_ uint64_t *pp, size_t bytes, unsigned int flags)'),
  memFreeHost: f('int cuMemFreeHost(uint64_t p)'),
  memcpyHtoD: f('int cuMemcpyHtoD_v2(uint64_t dst, void *src, size_t bytes)'),
  memcpyHtoDAsync: f('int cuMemcpyHtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uint64_t stream)'),
  memcpyDtoHAsync: f('int cuMemcpyDtoHAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uint64_t stream)'),
  memcpyDtoDAsync: f('int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uint64_t stream)'),
  memsetD32Async: f('int cuMemsetD32Async(uint64_t dst, unsigned int value, size_t count, uint64_t stream)'),
  memsetD8Async: f('int cuMemsetD8Async(uint64_t dst, unsigned char value, size_t count, uint64_t stream)'),
  streamCreate: f('int cuStreamCreate(_Out_ uint64_t *stream, unsigned int flags)'),
  streamSynchronize: f('int cuStreamSynchronize(uint64_t stream)'),
  eventCreate: f('int cuEventCreate(_Out_ uint64_t *event, unsigned int flags)'),
  eventRecord: f('int cuEventRecord(uint64_t event, uint64_t stream)'),
  eventSynchronize: f('int cuEventSynchronize(uint64_t event)'),
  eventElapsedTime: f('int cuEventElapsedTime(_Out_ float *ms, uint64_t start, uint64_t end)'),
  eventDestroy: f('int cuEventDestroy_v2(uint64_t event)'),
  moduleLoadData: f('int cuModuleLoadData(_Out_ uint64_t *module, void *image)'),
  moduleGetFunction: f('int cuModuleGetFunction(_Out_ uint64_t *fn, uint64_t module, const char *name)'),
  funcSetAttribute: f('int cuFuncSetAttribute(uint64_t fn, int attrib, int value)'),
  launchKernel: f(
    'int cuLaunchKernel(uint64_t fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, uint64_t stream, uint64_t params, uint64_t extra)',
  ),
  ipcGetMemHandle: f('int cuIpcGetMemHandle(_Out_ uint8_t *handle, uint64_t dptr)'),
  ipcOpenMemHandle: f('int cuIpcOpenMemHandle_v2(_Out_ uint64_t *dptr, CUipcMemHandle handle, unsigned int flags)'),
  ipcCloseMemHandle: f('int cuIpcCloseMemHandle(uint64_t dptr)'),
  // Tensor maps for the tensor memory accelerator (TMA, CUDA 12+ drivers): written to a 64-byte aligned address.
  tensorMapEncodeTiled: optional(
    'int cuTensorMapEncodeTiled(uint64_t map, int dtype, uint32_t rank, uint64_t address, const uint64_t *dims, const uint64_t *strides, const uint32_t *box, const uint32_t *elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill)',
  ),
  getErrorName: f('int cuGetErrorName(int error, _Out_ const char **name)'),
  getErrorString: f('int cuGetErrorString(int error, _Out_ const char **text)'),
};

export const CU_DEVICE_ATTRIBUTE = {
  MULTIPROCESSOR_COUNT: 16,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

export const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;

export function errorText(code: number): string {
  const name: (string | null)[] = [null];
  const text: (string | null)[] = [null];
  cu.getErrorName(code, name);
  cu.getErrorString(code, text);
  return `${name[0] ?? `CUDA error ${code}`}: ${text[0] ?? 'unknown error'}`;
}

/** Throws a CudaError unless the driver call returned CUDA_SUCCESS. */
export function check(api: string, code: number, detail = ''): void {
  if (code !== 0)
    throw new CudaError(api, code, `${api} failed with ${errorText(code)}${detail ? ` (${detail})` : ''}`);
}

/** Calls a driver function whose only out-parameter is a uint64 (pointer or handle) and returns it. */
export function outU64(api: string, fn: (out: BigUint64Array, ...args: never[]) => number, ...args: unknown[]): bigint {
  const out = new BigUint64Array(1);
  check(api, (fn as (...a: unknown[]) => number)(out, ...args));
  return out[0]!;
}

export function outI32(api: string, fn: (out: Int32Array, ...args: never[]) => number, ...args: unknown[]): number {
  const out = new Int32Array(1);
  check(api, (fn as (...a: unknown[]) => number)(out, ...args));
  return out[0]!;
}
