/**
 * What the CUDA backend finds on this machine, one finding at a time: the driver, each NVIDIA library with its
 * version and path (cuDNN is optional: its absence is a note), every GPU with its architecture and memory, peer
 * access between GPUs, and a real NVRTC compile and kernel launch. Nothing here throws on a missing GPU: each check
 * yields ok with its detail, or fail with the reason, so `nmoe doctor` answers on any machine. Modules load lazily,
 * so a failed driver load fails its own line and no other.
 */
export interface Finding {
  label: string;
  status: 'ok' | 'fail' | 'note';
  detail: string;
}

async function check(label: string, run: () => Promise<string> | string): Promise<Finding> {
  try {
    return { label, status: 'ok', detail: await run() };
  } catch (err) {
    return { label, status: 'fail', detail: (err as Error).message };
  }
}

export async function* probeCuda(): AsyncGenerator<Finding> {
  yield await check('driver', async () => {
    const { cu, outI32 } = await import('./driver.ts');
    const v = outI32('cuDriverGetVersion', cu.driverGetVersion);
    return `CUDA ${Math.floor(v / 1000)}.${(v % 1000) / 10} via ${cu.path}`;
  });
  yield await check('nvml', async () => {
    const nvml = await import('./nvml.ts');
    return `driver ${nvml.driverVersion()} via ${nvml.nvmlPath()}`;
  });
  yield await check('nvrtc', async () => {
    const { nvrtcVersion } = await import('./nvrtc.ts');
    const { LIBRARIES, loadLibrary } = await import('./libraries.ts');
    return `${nvrtcVersion()} via ${loadLibrary(LIBRARIES.nvrtc).path}`;
  });
  yield await check('cublasLt', async () => {
    const { cublasLtVersion } = await import('./cublaslt.ts');
    const { version, path } = cublasLtVersion();
    return `${version} via ${path}`;
  });
  // cuDNN is optional: without it attention runs on nmoe's own kernels, so its absence is a note, not a failure.
  const { cudnnProbe } = await import('./cudnn.ts');
  const dnn = cudnnProbe();
  yield dnn.ok
    ? { label: 'cudnn', status: 'ok', detail: `cuDNN ${dnn.text} via ${dnn.path}` }
    : {
        label: 'cudnn',
        status: 'note',
        detail: `not found: attention runs on nmoe's own kernels (${dnn.reason.split('. Looked in')[0]}; set NMOE_CUDNN_PATH to use one)`,
      };

  let count = 0;
  yield await check('gpus', async () => {
    const { deviceCount } = await import('./device.ts');
    count = deviceCount();
    if (count === 0) throw new Error('the driver reports no GPU');
    return `${count} visible`;
  });
  if (count === 0) return;
  const { deviceInfo } = await import('./device.ts');
  for (let i = 0; i < count; i++) {
    yield await check(`gpu ${i}`, () => {
      const d = deviceInfo(i);
      return `${d.name}, compute ${d.capability.join('.')} (kernels built for ${d.arch}), ${d.multiprocessors} SMs, ${(d.totalMemory / 2 ** 30).toFixed(1)} GiB`;
    });
  }
  if (count > 1) {
    yield await check('p2p', async () => {
      const { cu, outI32 } = await import('./driver.ts');
      const pairs: string[] = [];
      for (let a = 0; a < count; a++) {
        for (let b = 0; b < count; b++) {
          if (a !== b)
            pairs.push(`${a}->${b} ${outI32('cuDeviceCanAccessPeer', cu.deviceCanAccessPeer, a, b) ? 'yes' : 'NO'}`);
        }
      }
      if (pairs.some((p) => p.endsWith('NO')))
        throw new Error(`some GPU pairs lack peer access (RDEP needs it): ${pairs.join(', ')}`);
      return pairs.join(', ');
    });
  }
  yield await check('kernels', async () => {
    const { CudaBackend } = await import('./backend.ts');
    const b = new CudaBackend(0);
    const t0 = performance.now();
    const x = b.upload(
      Float32Array.from({ length: 1024 }, (_, i) => i),
      [1024],
      'f32',
    );
    const y = b.add(x, x);
    const v = await b.read(y);
    if (v[1023] !== 2046) throw new Error(`a test kernel returned ${v[1023]} instead of 2046`);
    return `compiled and ran on ${b.name} in ${(performance.now() - t0).toFixed(0)} ms`;
  });
}
