/** grouped_wgrad_pingpong_sm90.cu: the Hopper weight gradient on a ping-pong schedule (NMOE_WGRAD=pingpong). */
import { kernelFile } from '../kernel-table.ts';

export const GROUPED_WGRAD_PINGPONG_SM90 = kernelFile('grouped_wgrad_pingpong_sm90.cu', {
  grouped_wgrad_pingpong_sm90: {
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
