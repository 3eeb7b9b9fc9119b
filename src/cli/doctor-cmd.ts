/**
 * `nmoe doctor`: what nmoe finds on this machine — the driver, each NVIDIA library with its version and path (cuDNN
 * is optional: its absence is a note), every GPU with its architecture and memory, peer access between GPUs, and a
 * real NVRTC compile and kernel launch. Each check prints ok or a reason; nothing here throws on a missing GPU, so
 * it answers on any machine.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { UserError } from '../util/errors.ts';

type Check = () => Promise<string> | string;

async function line(label: string, check: Check): Promise<boolean> {
  try {
    const detail = await check();
    process.stdout.write(`${pc.green('ok  ')} ${label.padEnd(14)} ${detail}\n`);
    return true;
  } catch (err) {
    process.stdout.write(`${pc.red('FAIL')} ${label.padEnd(14)} ${(err as Error).message}\n`);
    return false;
  }
}

/** A line that is neither ok nor a failure: something optional that is not there. */
function note(label: string, detail: string): void {
  process.stdout.write(`${pc.yellow('--  ')} ${label.padEnd(14)} ${detail}\n`);
}

export async function doctor(): Promise<boolean> {
  let ok = await line('driver', async () => {
    const { cu, outI32 } = await import('../tensor/cuda/driver.ts');
    const v = outI32('cuDriverGetVersion', cu.driverGetVersion);
    return `CUDA ${Math.floor(v / 1000)}.${(v % 1000) / 10} via ${cu.path}`;
  });
  ok = (await line('nvml', async () => {
    const nvml = await import('../tensor/cuda/nvml.ts');
    return `driver ${nvml.driverVersion()} via ${nvml.nvmlPath()}`;
  })) && ok;
  ok = (await line('nvrtc', async () => {
    const { nvrtcVersion } = await import('../tensor/cuda/nvrtc.ts');
    const { LIBRARIES, loadLibrary } = await import('../tensor/cuda/libraries.ts');
    return `${nvrtcVersion()} via ${loadLibrary(LIBRARIES.nvrtc).path}`;
  })) && ok;
  ok = (await line('cublasLt', async () => {
    const { cublasLtVersion } = await import('../tensor/cuda/cublaslt.ts');
    const { version, path } = cublasLtVersion();
    return `${version} via ${path}`;
  })) && ok;
  // cuDNN is optional: without it attention runs on nmoe's own kernels, so its absence is a note, not a failure.
  {
    const { cudnnProbe } = await import('../tensor/cuda/cudnn.ts');
    const p = cudnnProbe();
    if (p.ok) await line('cudnn', () => `cuDNN ${p.text} via ${p.path}`);
    else note('cudnn', `not found: attention runs on nmoe's own kernels (${p.reason.split('. Looked in')[0]}; set NMOE_CUDNN_PATH to use one)`);
  }
  let count = 0;
  ok = (await line('gpus', async () => {
    const { deviceCount } = await import('../tensor/cuda/device.ts');
    count = deviceCount();
    if (count === 0) throw new Error('the driver reports no GPU');
    return `${count} visible`;
  })) && ok;
  const { deviceInfo } = count > 0 ? await import('../tensor/cuda/device.ts') : { deviceInfo: null };
  for (let i = 0; i < count && deviceInfo; i++) {
    ok = (await line(`gpu ${i}`, () => {
      const d = deviceInfo(i);
      return `${d.name}, compute ${d.capability.join('.')} (kernels built for ${d.arch}), ${d.multiprocessors} SMs, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB`;
    })) && ok;
  }
  if (count > 1) {
    ok = (await line('p2p', async () => {
      const { cu, outI32 } = await import('../tensor/cuda/driver.ts');
      const pairs: string[] = [];
      for (let a = 0; a < count; a++) {
        for (let b = 0; b < count; b++) {
          if (a !== b) pairs.push(`${a}->${b} ${outI32('cuDeviceCanAccessPeer', cu.deviceCanAccessPeer, a, b) ? 'yes' : 'NO'}`);
        }
      }
      if (pairs.some((p) => p.endsWith('NO'))) throw new Error(`some GPU pairs lack peer access (RDEP needs it): ${pairs.join(', ')}`);
      return pairs.join(', ');
    })) && ok;
  }
  if (count > 0) {
    ok = (await line('kernels', async () => {
      const { CudaBackend } = await import('../tensor/cuda/backend.ts');
      const b = new CudaBackend(0);
      const t0 = performance.now();
      const x = b.upload(Float32Array.from({ length: 1024 }, (_, i) => i), [1024], 'f32');
      const y = b.add(x, x);
      const v = await b.read(y);
      if (v[1023] !== 2046) throw new Error(`a test kernel returned ${v[1023]} instead of 2046`);
      return `compiled and ran on ${b.name} in ${(performance.now() - t0).toFixed(0)} ms`;
    })) && ok;
  }
  return ok;
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('Show the GPUs, the driver, each NVIDIA library (version and path) and whether peer access works.')
    .action(async () => {
      if (!(await doctor())) throw new UserError('some checks failed: see the FAIL lines above');
    });
}
