/**
 * safetensors reader/writer: round trips, byte-for-byte agreement with the files Python's `safetensors` package
 * writes, the file it writes read back, every kind of corruption named in the error, and ParamStore save/load.
 *
 * The Python-written files are fixed here as bytes, built by the rules of the Rust crate behind the package
 * (tensors sorted by dtype, widest first, then by name; "__metadata__" first; compact JSON; header padded with
 * spaces to 8 bytes). Two of them are that crate's own known answers. Where python3 can import `safetensors`
 * (the GPU machine), the last suite also checks against the real package in both directions.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadParams, saveParams } from '../src/checkpoint/params-io.ts';
import {
  type TensorToWrite,
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
} from '../src/checkpoint/safetensors.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { ParamStore } from '../src/model/params.ts';
import { modelConfig } from '../src/config/sections.ts';
import { modelParamSpecs } from '../src/model/spec.ts';
import { roundToBf16 } from '../src/tensor/bf16.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';

const dir = mkdtempSync(join(tmpdir(), 'nmoe-safetensors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
const tmp = (name = 'x') => join(dir, `${fileNo++}-${name}.safetensors`);

const hex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

/** The bytes a Python writer produces: u64 length, the header text padded with spaces to 8 bytes, the data. */
function pythonFile(header: string, data: Uint8Array): Uint8Array {
  const padded = header + ' '.repeat((8 - (header.length % 8)) % 8);
  const out = Buffer.alloc(8 + padded.length + data.length);
  out.writeBigUInt64LE(BigInt(padded.length));
  out.write(padded, 8, 'latin1');
  out.set(data, 8 + padded.length);
  return new Uint8Array(out);
}

describe('round trip', () => {
  it('F32, BF16 and I32 with metadata, including empty and scalar shapes', () => {
    const f = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i) * 10 ** ((i % 7) - 3));
    const b = Float32Array.from([1, -0.5, 3.14159, 1e-30, 65504.7, -1 / 3, Infinity, -Infinity, NaN]);
    const n = Int32Array.from([0, -1, 2147483647, -2147483648, 42]);
    const tensors: TensorToWrite[] = [
      { name: 'blocks.0.attn.wq.weight', dtype: 'F32', shape: [2, 3, 4], data: f },
      { name: 'b', dtype: 'BF16', shape: [9], data: b },
      { name: 'ids', dtype: 'I32', shape: [5], data: n },
      { name: 'empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
      { name: 'scalar', dtype: 'F32', shape: [], data: Float32Array.from([2.5]) },
      { name: '0', dtype: 'I32', shape: [1], data: Int32Array.from([7]) },
    ];
    const path = tmp();
    writeSafetensors(path, tensors, { format: 'pt', step: '12', note: 'ünïcode ✓' });
    const { tensors: got, metadata } = readSafetensors(path);
    expect(metadata).toEqual({ format: 'pt', step: '12', note: 'ünïcode ✓' });
    expect([...got.keys()].sort()).toEqual(tensors.map((t) => t.name).sort());
    expect(got.get('blocks.0.attn.wq.weight')).toEqual({ dtype: 'F32', shape: [2, 3, 4], data: f });
    expect(got.get('ids')).toEqual({ dtype: 'I32', shape: [5], data: n });
    expect(got.get('empty')!.data.length).toBe(0);
    expect(got.get('scalar')).toEqual({ dtype: 'F32', shape: [], data: Float32Array.from([2.5]) });
    expect(got.get('0')!.data).toEqual(Int32Array.from([7]));
    const bf = got.get('b')!;
    expect(bf.dtype).toBe('BF16');
    expect(Array.from(bf.data)).toEqual(Array.from(b, (x) => roundToBf16(x)));
    // The file layout: data on an 8-byte boundary, every tensor aligned to its element size.
    const bytes = readFileSync(path);
    expect(Number(bytes.readBigUInt64LE(0)) % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8'));
    for (const [name, info] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const {
        dtype,
        data_offsets: [start],
      } = info as { dtype: string; data_offsets: [number, number] };
      expect(start % (dtype === 'BF16' ? 2 : 4), name).toBe(0);
    }
  });

  it('bf16 rounds to nearest even, ties included', () => {
    // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1).
    // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go up to the even one (1 + 2^-6).
    const data = Float32Array.from([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20]);
    const path = tmp();
    writeSafetensors(path, [{ name: 'x', dtype: 'BF16', shape: [3], data }]);
    expect(Array.from(readSafetensors(path).tensors.get('x')!.data)).toEqual([1, 1 + 2 ** -6, 1 + 2 ** -7]);
  });

  it('overwrites atomically and leaves no temporary files', () => {
    const path = tmp('atomic');
    writeSafetensors(path, [{ name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([1]) }]);
    writeSafetensors(path, [{ name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([2]) }]);
    expect(readSafetensors(path).tensors.get('a')!.data[0]).toBe(2);
    // A rejected write leaves the old file as it was.
    expect(() =>
      writeSafetensors(path, [{ name: 'a', dtype: 'F32', shape: [2], data: Float32Array.from([3]) }]),
    ).toThrow(/shape \[2\] \(2 elements\) but 1 values/);
    expect(readSafetensors(path).tensors.get('a')!.data[0]).toBe(2);
    expect(readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('rejects bad writer arguments with the file and the tensor named', () => {
    const path = tmp();
    const one = (t: Partial<TensorToWrite>) => () =>
      writeSafetensors(path, [
        { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([1]), ...t } as TensorToWrite,
      ]);
    expect(one({ dtype: 'I32' })).toThrow(/tensor "a" is I32 but its data is a Float32Array/);
    expect(one({ dtype: 'F16' as never })).toThrow(/writable dtypes are F32, BF16, I32/);
    expect(one({ name: '__metadata__' })).toThrow(/reserved/);
    expect(one({ shape: [-1] })).toThrow(/non-negative integers/);
    expect(() =>
      writeSafetensors(path, [
        { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([1]) },
        { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([1]) },
      ]),
    ).toThrow(new RegExp(`cannot write ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: tensor name "a" appears twice`));
    expect(existsSync(path)).toBe(false);
  });

  it('reads a subset by name, or the header alone', () => {
    const path = tmp();
    writeSafetensors(
      path,
      [
        { name: 'a', dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) },
        { name: 'b', dtype: 'I32', shape: [1], data: Int32Array.from([3]) },
      ],
      { k: 'v' },
    );
    expect([...readSafetensors(path, { names: ['b'] }).tensors.keys()]).toEqual(['b']);
    expect(() => readSafetensors(path, { names: ['c'] })).toThrow(/no tensor named "c"/);
    const h = readSafetensorsHeader(path);
    expect(h.metadata).toEqual({ k: 'v' });
    expect(h.tensors.get('a')).toEqual({ dtype: 'F32', shape: [2] });
  });
});

describe('the files Python writes', () => {
  it("matches the Rust crate's known answers byte for byte", () => {
    const encode = (tensors: TensorToWrite[], metadata?: Record<string, string>) => {
      const path = join(dir, 'known-answer.safetensors');
      writeSafetensors(path, tensors, metadata);
      return readFileSync(path);
    };
    // safetensors' own serialization tests: one F32 [1, 2, 3] tensor 0..5 named "attn.0" (a 64-byte header, no
    // padding needed), and an empty file with metadata {"framework": "pt"} (35 bytes padded to 40).
    const attn = encode([
      { name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], data: Float32Array.from([0, 1, 2, 3, 4, 5]) },
    ]);
    expect(Array.from(attn)).toEqual([
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100, 116, 121, 112, 101, 34, 58, 34,
      70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95,
      111, 102, 102, 115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0,
      64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ]);
    const empty = encode([], { framework: 'pt' });
    expect(Array.from(empty)).toEqual([
      40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95, 95, 34, 58, 123, 34, 102, 114,
      97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112, 116, 34, 125, 125, 32, 32, 32, 32, 32,
    ]);
    expect(Array.from(encode([]))).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
  });

  it('writes the bytes Python writes for mixed dtypes (sorted F32, I32, BF16, then by name)', () => {
    // Python: save_file({"w": f32 [[1.5, -2], [0.25, 3]], "n": i32 [7, -9], "b": bf16 [1, -0.5, 3.140625],
    //                    "a": f32 [0.5]}, path, metadata={"format": "pt"})
    const expected = pythonFile(
      '{"__metadata__":{"format":"pt"},' +
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
        '"w":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]},' +
        '"n":{"dtype":"I32","shape":[2],"data_offsets":[20,28]},' +
        '"b":{"dtype":"BF16","shape":[3],"data_offsets":[28,34]}}',
      hex('0000003f 0000c03f 000000c0 0000803e 00004040 07000000 f7ffffff 803f 00bf 4940'),
    );
    const path = tmp();
    writeSafetensors(
      path,
      [
        { name: 'w', dtype: 'F32', shape: [2, 2], data: Float32Array.from([1.5, -2, 0.25, 3]) },
        { name: 'n', dtype: 'I32', shape: [2], data: Int32Array.from([7, -9]) },
        { name: 'b', dtype: 'BF16', shape: [3], data: Float32Array.from([1, -0.5, 3.14159]) },
        { name: 'a', dtype: 'F32', shape: [1], data: Float32Array.from([0.5]) },
      ],
      { format: 'pt' },
    );
    expect(new Uint8Array(readFileSync(path))).toEqual(expected);
  });

  it('reads a Python-written file with I64, F32, I32 and BF16', () => {
    // Python: save_file({"ids": int64 [1, -2, 1500000000], "w": f32 [[1.5, -2], [0.25, 3]], "n": int32 [7, -9],
    //                    "b": bf16 [1, -0.5, 3.14159]}, path, metadata={"format": "pt"}) — 318 bytes.
    const path = tmp('python');
    writeFileSync(
      path,
      hex(
        '0001000000000000 7b225f5f6d657461646174615f5f223a7b22666f726d6174223a227074227d2c22696473223a7b2264747970' +
          '65223a22493634222c227368617065223a5b335d2c22646174615f6f666673657473223a5b302c32345d7d2c2277223a7b22647479' +
          '7065223a22463332222c227368617065223a5b322c325d2c22646174615f6f666673657473223a5b32342c34305d7d2c226e223a7b' +
          '226474797065223a22493332222c227368617065223a5b325d2c22646174615f6f666673657473223a5b34302c34385d7d2c226222' +
          '3a7b226474797065223a2242463136222c227368617065223a5b335d2c22646174615f6f666673657473223a5b34382c35345d7d7d' +
          '0100000000000000feffffffffffffff002f685900000000 0000c03f000000c00000803e00004040 07000000f7ffffff 803f00bf4940',
      ),
    );
    const { tensors, metadata } = readSafetensors(path);
    expect(metadata).toEqual({ format: 'pt' });
    expect([...tensors.keys()]).toEqual(['ids', 'w', 'n', 'b']);
    expect(tensors.get('ids')).toEqual({ dtype: 'I64', shape: [3], data: Int32Array.from([1, -2, 1500000000]) });
    expect(tensors.get('w')).toEqual({ dtype: 'F32', shape: [2, 2], data: Float32Array.from([1.5, -2, 0.25, 3]) });
    expect(tensors.get('n')).toEqual({ dtype: 'I32', shape: [2], data: Int32Array.from([7, -9]) });
    expect(tensors.get('b')).toEqual({ dtype: 'BF16', shape: [3], data: Float32Array.from([1, -0.5, 3.140625]) });
  });

  it('reads headers in any key order, as older writers produced', () => {
    const path = tmp();
    writeFileSync(
      path,
      pythonFile(
        '{"z":{"data_offsets":[4,8],"shape":[1],"dtype":"I32"},"__metadata__":{},"a":{"shape":[1],"dtype":"F32","data_offsets":[0,4]}}',
        hex('0000803f 05000000'),
      ),
    );
    const { tensors } = readSafetensors(path);
    expect([...tensors.keys()]).toEqual(['a', 'z']);
    expect(tensors.get('z')!.data).toEqual(Int32Array.from([5]));
  });
});

describe('corrupt files', () => {
  const good = () => {
    const path = tmp('good');
    writeSafetensors(path, [
      { name: 'a', dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) },
      { name: 'b', dtype: 'F32', shape: [1], data: Float32Array.from([3]) },
    ]);
    return readFileSync(path);
  };
  const header = (text: string, data = new Uint8Array(12)) => pythonFile(text, data);
  const fails = (bytes: Uint8Array, pattern: RegExp) => {
    const path = tmp('bad');
    writeFileSync(path, bytes);
    let message = '';
    try {
      readSafetensors(path);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message, 'no error').not.toBe('');
    expect(message.startsWith(path), `the message names the file: ${message}`).toBe(true);
    expect(message).toMatch(pattern);
  };

  it('truncated data, header or length prefix', () => {
    const bytes = good();
    fails(
      bytes.subarray(0, bytes.length - 1),
      /truncated: the header describes 12 bytes of tensor data, the file holds 11/,
    );
    fails(bytes.subarray(0, 20), /truncated: the header declares \d+ bytes but only 12 follow/);
    fails(bytes.subarray(0, 5), /truncated: 5 bytes, too small/);
    fails(new Uint8Array(0), /truncated: 0 bytes/);
  });

  it('trailing bytes after the last tensor', () => {
    const bytes = good();
    fails(Buffer.concat([bytes, Buffer.from([0, 0, 0, 0])]), /4 unexpected bytes after the last tensor/);
  });

  it('an absurd header length', () => {
    const bytes = Buffer.alloc(16);
    bytes.writeBigUInt64LE(2n ** 62n);
    fails(bytes, /bad header: declared length \d+ bytes exceeds the cap of 100000000/);
  });

  it('a header that is not UTF-8, not JSON or not an object', () => {
    fails(pythonFile('{"a":1', new Uint8Array(0)), /bad header: not valid JSON/);
    fails(pythonFile('[1,2]', new Uint8Array(0)), /bad header: not a JSON object/);
    const latin = Buffer.from(pythonFile('{"\xff":1}', new Uint8Array(0)));
    fails(latin, /bad header: not valid UTF-8/);
  });

  it('unknown and unsupported dtypes', () => {
    fails(header('{"a":{"dtype":"F33","shape":[3],"data_offsets":[0,12]}}'), /tensor "a" has unknown dtype "F33"/);
    fails(
      header('{"a":{"dtype":"F16","shape":[6],"data_offsets":[0,12]}}'),
      /tensor "a" has dtype F16, which this reader does not support/,
    );
  });

  it('malformed entries', () => {
    fails(header('{"a":{"dtype":"F32","shape":[3]}}'), /tensor "a" has data_offsets undefined/);
    fails(header('{"a":{"dtype":"F32","shape":[-3],"data_offsets":[0,12]}}'), /tensor "a" has shape \[-3\]/);
    fails(
      header('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}'),
      /tensor "a" is F32 \[2\] \(8 bytes\) but its data_offsets \[0, 12\] span 12 bytes/,
    );
    fails(header('{"a":{"dtype":"F32","shape":[3],"data_offsets":[12,0]}}'), /end before they start/);
    fails(
      header('{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}'),
      /"__metadata__"."k" is not a string/,
    );
  });

  it('holes and overlaps between tensors', () => {
    fails(
      header(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
      ),
      /hole in the data: bytes \[4, 8\) belong to no tensor \(between "a" and "b"\)/,
    );
    fails(header('{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'), /hole in the data: bytes \[0, 4\)/);
    fails(
      header(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
      ),
      /tensors "a" \[0, 8\] and "b" \[4, 12\] overlap/,
    );
  });

  it('I64 values outside int32, and a missing file', () => {
    const data = new Uint8Array(8);
    new DataView(data.buffer).setBigInt64(0, 2n ** 40n, true);
    fails(
      pythonFile('{"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}', data),
      /I64 tensor "i" holds 1099511627776/,
    );
    expect(() => readSafetensors(join(dir, 'nope.safetensors'))).toThrow(/nope.safetensors: no such file/);
  });
});

describe('ParamStore save and load', () => {
  const cpu = new CpuBackend();
  const build = (overrides: string[] = []) => {
    const { config } = loadConfig(defaultConfigPath(), {
      overrides: [
        '--dim=16',
        '--n_layers=2',
        '--n_heads=2',
        '--inter_dim=24',
        '--moe_inter_dim=8',
        '--n_routed_experts=4',
        '--q_lora_rank=8',
        '--kv_lora_rank=8',
        '--qk_nope_head_dim=4',
        '--qk_rope_head_dim=4',
        '--v_head_dim=4',
        ...overrides,
      ],
      env: {},
    });
    return modelConfig(config);
  };

  it('round trips every parameter and buffer, in f32 and bf16', async () => {
    for (const dtype of ['f32', 'bf16'] as const) {
      const cfg = build();
      const a = new ParamStore(cpu, modelParamSpecs(cfg), dtype);
      a.initialize(1);
      cpu.fillNormal(a.get('blocks.1.ffn.router.bias'), { std: 0.1, seed: 3, stream: 4 });
      const path = tmp(dtype);
      await saveParams(path, a);
      const h = readSafetensorsHeader(path);
      expect(h.tensors.get('blocks.0.attn.wq_a.weight')!.dtype).toBe(dtype === 'bf16' ? 'BF16' : 'F32');
      expect(h.tensors.get('blocks.1.ffn.router.bias')!.dtype).toBe('F32');
      expect(h.metadata.param_dtype).toBe(dtype);
      const b = new ParamStore(cpu, modelParamSpecs(cfg), dtype);
      b.initialize(2);
      await loadParams(path, b);
      for (const p of a.params) expect(await cpu.read(b.get(p.name)), p.name).toEqual(await cpu.read(p.value));
    }
  });

  it('names every missing, unexpected and mis-shaped tensor', async () => {
    const a = new ParamStore(cpu, modelParamSpecs(build()), 'f32');
    a.initialize(1);
    const path = tmp();
    await saveParams(path, a);
    const other = new ParamStore(cpu, modelParamSpecs(build(['--n_layers=3', '--dim=32'])), 'f32');
    await expect(loadParams(path, other)).rejects.toThrow(
      /does not match the model\. \d+ missing: blocks\.2\.attn_norm\.weight \[32\];.*\d+ wrong shape: embedding\.weight is \[256, 16\] in the file, the model needs \[256, 32\]/,
    );
    const mha = new ParamStore(cpu, modelParamSpecs(build(['--attn=mha'])), 'f32');
    await expect(loadParams(path, mha)).rejects.toThrow(
      /6 missing: blocks\.0\.attn\.wq\.weight \[16, 16\];.*12 unexpected: blocks\.0\.attn\.kv_norm\.weight/,
    );
  });
});

const python = spawnSync('python3', ['-c', 'import safetensors, numpy'], { encoding: 'utf8' });
const hasSafetensors = python.status === 0;

describe.skipIf(!hasSafetensors)('against the Python safetensors package', () => {
  it('Python reads what nmoe writes and nmoe reads what Python writes', () => {
    const ours = tmp('ours');
    writeSafetensors(
      ours,
      [
        { name: 'w', dtype: 'F32', shape: [2, 2], data: Float32Array.from([1.5, -2, 0.25, 3]) },
        { name: 'n', dtype: 'I32', shape: [2], data: Int32Array.from([7, -9]) },
        { name: 'b', dtype: 'BF16', shape: [3], data: Float32Array.from([1, -0.5, 3.14159]) },
      ],
      { format: 'pt' },
    );
    const theirs = tmp('theirs');
    const script = `
import sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
with safe_open(sys.argv[1], framework="numpy") as f:
    assert f.metadata() == {"format": "pt"}, f.metadata()
    assert f.get_tensor("w").tolist() == [[1.5, -2.0], [0.25, 3.0]]
    assert f.get_tensor("n").tolist() == [7, -9]
    assert sorted(f.keys()) == ["b", "n", "w"]
save_file({"w": np.array([[1.5, -2], [0.25, 3]], dtype=np.float32), "n": np.array([7, -9], dtype=np.int32),
           "ids": np.array([1, -2, 1500000000], dtype=np.int64)}, sys.argv[2], metadata={"format": "pt"})
`;
    const r = spawnSync('python3', ['-c', script, ours, theirs], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const { tensors, metadata } = readSafetensors(theirs);
    expect(metadata).toEqual({ format: 'pt' });
    expect(tensors.get('ids')!.data).toEqual(Int32Array.from([1, -2, 1500000000]));
    expect(tensors.get('w')!.data).toEqual(Float32Array.from([1.5, -2, 0.25, 3]));
    expect(tensors.get('n')!.data).toEqual(Int32Array.from([7, -9]));
  });
});
