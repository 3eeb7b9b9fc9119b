/**
 * How the CUDA backend's grouped expert GEMMs run, from the environment (src/tensor/cuda/grouped-options.ts):
 * NMOE_GROUPED_GEMM picks the path, NMOE_WGRAD the Hopper weight-gradient kernel; a value that is neither is a
 * one-line error naming the variable, the value and the fix.
 */
import { describe, expect, it } from 'vitest';
import { groupedGemmOptionsFromEnv } from '../src/tensor/cuda/grouped-options.ts';
import { UserError } from '../src/util/errors.ts';

describe('grouped GEMM options from the environment', () => {
  it('defaults to the auto path and the cooperative weight gradient', () => {
    expect(groupedGemmOptionsFromEnv({})).toMatchObject({ path: 'auto', wgrad: 'cooperative' });
    expect(groupedGemmOptionsFromEnv({ NMOE_GROUPED_GEMM: '', NMOE_WGRAD: '' })).toMatchObject({
      path: 'auto',
      wgrad: 'cooperative',
    });
  });

  it('takes NMOE_WGRAD=pingpong and NMOE_GROUPED_GEMM=wgmma', () => {
    expect(groupedGemmOptionsFromEnv({ NMOE_GROUPED_GEMM: 'wgmma', NMOE_WGRAD: 'pingpong' })).toMatchObject({
      path: 'wgmma',
      wgrad: 'pingpong',
    });
  });

  it('refuses other values in one line with the fix', () => {
    const message = (env: Record<string, string>) => {
      try {
        groupedGemmOptionsFromEnv(env);
      } catch (e) {
        expect(e).toBeInstanceOf(UserError);
        return (e as Error).message;
      }
      throw new Error('no error');
    };
    expect(message({ NMOE_WGRAD: 'ping-pong' })).toMatch(
      /^NMOE_WGRAD="ping-pong" is not a Hopper weight-gradient kernel\. Fix: NMOE_WGRAD=cooperative .* or pingpong /,
    );
    expect(message({ NMOE_GROUPED_GEMM: 'cutlass' })).toMatch(/^NMOE_GROUPED_GEMM="cutlass" is not .* Fix: .*mma/);
    expect(message({ NMOE_WGRAD: 'x' })).not.toContain('\n');
  });
});
