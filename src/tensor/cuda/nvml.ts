/**
 * NVML bindings for `nmoe doctor` and the GPU metrics: driver version and, per GPU, name, memory, utilisation,
 * power, temperature, SM clock and throttle reasons. Read-only queries; nothing changes the card's settings.
 */
import { LIBRARIES, loadLibrary } from './libraries.ts';

const THROTTLE = { power: 0x4n, hwSlowdown: 0x8n, apps: 0x2n, thermal: 0x20n | 0x40n } as const;

let api: ReturnType<typeof bind> | null = null;

function bind() {
  const { lib, path } = loadLibrary(LIBRARIES.nvml);
  const f = (sig: string) => lib.func(sig);
  const nvml = {
    path,
    init: f('int nvmlInit_v2()'),
    driverVersion: f('int nvmlSystemGetDriverVersion(_Out_ uint8_t *version, unsigned int length)'),
    count: f('int nvmlDeviceGetCount_v2(_Out_ unsigned int *count)'),
    handle: f('int nvmlDeviceGetHandleByIndex_v2(unsigned int index, _Out_ uint64_t *device)'),
    name: f('int nvmlDeviceGetName(uint64_t device, _Out_ uint8_t *name, unsigned int length)'),
    memory: f('int nvmlDeviceGetMemoryInfo(uint64_t device, _Out_ uint64_t *info)'),
    utilization: f('int nvmlDeviceGetUtilizationRates(uint64_t device, _Out_ unsigned int *rates)'),
    temperature: f('int nvmlDeviceGetTemperature(uint64_t device, int sensor, _Out_ unsigned int *temp)'),
    power: f('int nvmlDeviceGetPowerUsage(uint64_t device, _Out_ unsigned int *milliwatts)'),
    powerLimit: f('int nvmlDeviceGetEnforcedPowerLimit(uint64_t device, _Out_ unsigned int *milliwatts)'),
    clock: f('int nvmlDeviceGetClockInfo(uint64_t device, int type, _Out_ unsigned int *mhz)'),
    throttle: f('int nvmlDeviceGetCurrentClocksThrottleReasons(uint64_t device, _Out_ uint64_t *reasons)'),
    // errorType 0 corrected / 1 uncorrected; counterType 0 = volatile (since the driver loaded)
    ecc: f('int nvmlDeviceGetTotalEccErrors(uint64_t device, int errorType, int counterType, _Out_ uint64_t *count)'),
    errorString: f('const char *nvmlErrorString(int result)'),
  };
  const rc = nvml.init();
  if (rc !== 0) throw new Error(`nvmlInit failed: ${nvml.errorString(rc)}`);
  return nvml;
}

function nvml() {
  api ??= bind();
  return api;
}

export function nvmlPath(): string {
  return nvml().path;
}

export function driverVersion(): string {
  const buf = Buffer.alloc(96);
  return nvml().driverVersion(buf, 96) === 0 ? buf.toString('utf8').replace(/\0.*$/s, '') : 'unknown';
}

export interface GpuSample {
  index: number;
  name: string;
  utilization_gpu: number;
  memory_used_gib: number;
  memory_total_gib: number;
  power_draw_w: number;
  power_limit_w: number;
  temperature_c: number;
  clocks_sm_mhz: number;
  throttle_thermal: number;
  throttle_power: number;
  throttle_hw_slowdown: number;
  throttle_apps: number;
  /** NaN where ECC is off or unsupported. */
  ecc_corrected: number;
  ecc_uncorrected: number;
}

/** One reading of every GPU; a field NVML cannot read is NaN. */
export function sampleGpus(): GpuSample[] {
  const n = nvml();
  const count = new Uint32Array(1);
  if (n.count(count) !== 0) return [];
  const u32 = (fn: (out: Uint32Array) => number) => {
    const o = new Uint32Array(2);
    return fn(o) === 0 ? o : null;
  };
  return Array.from({ length: count[0]! }, (_, index) => {
    const h = new BigUint64Array(1);
    n.handle(index, h);
    const dev = h[0]!;
    const name = Buffer.alloc(96);
    n.name(dev, name, 96);
    const mem = new BigUint64Array(3); // total, free, used
    const memOk = n.memory(dev, mem) === 0;
    const reasons = new BigUint64Array(1);
    const thrOk = n.throttle(dev, reasons) === 0;
    const flag = (bits: bigint) => (thrOk ? Number((reasons[0]! & bits) !== 0n) : NaN);
    const ecc = (type: number) => {
      const c = new BigUint64Array(1);
      return n.ecc(dev, type, 0, c) === 0 ? Number(c[0]) : NaN;
    };
    return {
      index,
      name: name.toString('utf8').replace(/\0.*$/s, ''),
      utilization_gpu: u32((o) => n.utilization(dev, o))?.[0] ?? NaN,
      memory_used_gib: memOk ? Number(mem[2]) / 2 ** 30 : NaN,
      memory_total_gib: memOk ? Number(mem[0]) / 2 ** 30 : NaN,
      power_draw_w: (u32((o) => n.power(dev, o))?.[0] ?? NaN) / 1000,
      power_limit_w: (u32((o) => n.powerLimit(dev, o))?.[0] ?? NaN) / 1000,
      temperature_c: u32((o) => n.temperature(dev, 0, o))?.[0] ?? NaN,
      clocks_sm_mhz: u32((o) => n.clock(dev, 1, o))?.[0] ?? NaN,
      throttle_thermal: flag(THROTTLE.thermal),
      throttle_power: flag(THROTTLE.power),
      throttle_hw_slowdown: flag(THROTTLE.hwSlowdown),
      throttle_apps: flag(THROTTLE.apps),
      ecc_corrected: ecc(0),
      ecc_uncorrected: ecc(1),
    };
  });
}
