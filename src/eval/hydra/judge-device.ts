/**
 * The judge's two wide linears (the projector, the keys and values) on a backend, for grading: the weights are
 * uploaded once in `dtype` (the backbone's: bf16 on a GPU, fp32 on the CPU), each document's rows go up in it, the
 * product comes back in fp32 and the biases are added on the host. Everything else in the judge is O(S d) or less
 * and stays on the host (judge.ts).
 */
import type { Backend } from '../../tensor/backend.ts';
import type { DType, Tensor } from '../../tensor/tensor.ts';
import type { HeadParams } from './head-params.ts';
import type { JudgeLinears, JudgeShape } from './judge.ts';

export class DeviceLinears implements JudgeLinears {
  readonly #projector: Tensor;
  /** The keys' and values' rows of in_proj_weight: [2 d, d]. */
  readonly #keysValues: Tensor;

  constructor(
    readonly b: Backend,
    readonly p: HeadParams,
    readonly s: JudgeShape,
    readonly dtype: DType,
  ) {
    const { hidden, d } = s;
    this.#projector = b.upload(p.value('projector.weight'), [d, hidden], dtype);
    this.#keysValues = b.upload(p.value('encoder.self_attn.in_proj_weight').subarray(d * d), [2 * d, d], dtype);
  }

  async project(u: Float32Array, rows: number): Promise<Float32Array> {
    return this.#linear(u, rows, this.s.hidden, this.#projector, this.p.value('projector.bias'));
  }

  async keysValues(z0: Float32Array, rows: number): Promise<{ k: Float32Array; v: Float32Array }> {
    const d = this.s.d;
    const kv = await this.#linear(
      z0,
      rows,
      d,
      this.#keysValues,
      this.p.value('encoder.self_attn.in_proj_bias').subarray(d),
    );
    const k = new Float32Array(rows * d),
      v = new Float32Array(rows * d);
    for (let r = 0; r < rows; r++) {
      k.set(kv.subarray(r * 2 * d, r * 2 * d + d), r * d);
      v.set(kv.subarray(r * 2 * d + d, (r + 1) * 2 * d), r * d);
    }
    return { k, v };
  }

  async #linear(x: Float32Array, rows: number, inDim: number, w: Tensor, bias: Float32Array): Promise<Float32Array> {
    const xt = this.b.upload(x, [rows, inDim], this.dtype);
    const yt = this.b.matmul(xt, w, { transB: true, outDtype: 'f32' });
    const y = (await this.b.read(yt)) as Float32Array;
    xt.free();
    yt.free();
    const out = bias.length;
    for (let r = 0; r < rows; r++) for (let o = 0; o < out; o++) y[r * out + o]! += bias[o]!;
    return y;
  }

  free(): void {
    this.#projector.free();
    this.#keysValues.free();
  }
}
