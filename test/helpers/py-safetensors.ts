/**
 * An independent safetensors reader for tests: python3 + numpy parse the header with json/struct and the data with
 * numpy (BF16 widened through uint32 << 16), without the `safetensors` package, which this machine may lack.
 */
import { spawnSync } from 'node:child_process';

const SCRIPT = `
import json, struct, sys, numpy as np
path = sys.argv[1]
with open(path, 'rb') as f:
    raw = f.read()
(n,) = struct.unpack('<Q', raw[:8])
header = json.loads(raw[8:8 + n])
meta = header.pop('__metadata__', {})
out = {}
for name, h in header.items():
    a, b = h['data_offsets']
    buf = raw[8 + n + a:8 + n + b]
    if h['dtype'] == 'BF16':
        x = (np.frombuffer(buf, '<u2').astype(np.uint32) << 16).view(np.float32)
    else:
        x = np.frombuffer(buf, {'F32': '<f4', 'I32': '<i4'}[h['dtype']])
    x = x.reshape(h['shape'])
    out[name] = {'dtype': h['dtype'], 'shape': list(x.shape), 'sum': float(x.astype(np.float64).sum()), 'head': [float(v) for v in x.reshape(-1)[:4]]}
print(json.dumps({'metadata': meta, 'tensors': out}))
`;

export interface PyTensor {
  dtype: string;
  shape: number[];
  /** float64 sum of every element, and the first four elements. */
  sum: number;
  head: number[];
}

export function pyReadSafetensors(path: string): {
  metadata: Record<string, string>;
  tensors: Record<string, PyTensor>;
} {
  const r = spawnSync('python3', ['-c', SCRIPT, path], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`python3 could not read ${path}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** float64 sum, as numpy computes it from the same float32 values (sequential sum is within rounding of it). */
export function sum64(x: Float32Array | Int32Array): number {
  let s = 0;
  for (const v of x) s += v;
  return s;
}
