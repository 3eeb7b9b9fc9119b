/** grouped_sm90.cu: the Hopper grouped expert GEMMs, instantiated on demand per tile (grouped-sm90.ts picks it). */
import { kernelFile } from '../kernel-table.ts';

export const GROUPED_SM90 = kernelFile('grouped_sm90.cu', {
  grouped_gemm_sm90: {
    template: ['BN', 'B_KMAJOR', 'SWIGLU'],
    // The tiles fwdLaunch (grouped-sm90.ts) picks: 128 or 256 wide, B K-major or not; the fused SwiGLU at 128.
    reachable: ['256, 0, 0', '256, 1, 0', '128, 0, 0', '128, 1, 0', '128, 0, 1'],
    params: [
      ['map_x', 'TmaMap'],
      ['map_w', 'TmaMap'],
      ['map_x2', 'TmaMap'],
      ['map_w2', 'TmaMap'],
      ['y', 'ptr'],
      ['y2', 'ptr'],
      ['y3', 'ptr'],
      ['offsets', 'ptr'],
      ['tiles', 'ptr'],
      ['num_tiles', 'ptr'],
      ['din', 'i32'],
      ['din2', 'i32'],
      ['dout', 'i32'],
      ['flags', 'i32'],
      ['wd', 'ptr'],
    ],
  },
  grouped_wgrad_sm90: {
    template: ['BM', 'BN'],
    // The weight-gradient tiles of chooseWgradTile (grouped-sm90.ts).
    reachable: ['128, 256', '256, 128'],
    params: [
      ['map_x', 'TmaMap'],
      ['map_dy', 'TmaMap'],
      ['map_dw', 'TmaMap'],
      ['offsets', 'ptr'],
      ['experts', 'i32'],
      ['din', 'i32'],
      ['dout', 'i32'],
      ['accumulate', 'i32'],
      ['flags', 'i32'],
      ['wd', 'ptr'],
    ],
  },
} as const);
