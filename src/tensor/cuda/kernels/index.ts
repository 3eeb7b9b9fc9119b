/** Every kernel file's table (one module beside each .cu). */
import type { KernelFile } from '../kernel-table.ts';
import { ATTENTION } from './attention.ts';
import { ELEMENTWISE } from './elementwise.ts';
import { FLASH } from './flash.ts';
import { GROUPED } from './grouped.ts';
import { GROUPED_SM90 } from './grouped_sm90.ts';
import { LOSS } from './loss.ts';
import { LOSS_SM90 } from './loss_sm90.ts';
import { MOE } from './moe.ts';
import { OPTIM } from './optim.ts';
import { RDEP } from './rdep.ts';

export const KERNEL_FILES: readonly KernelFile[] = [
  ATTENTION,
  ELEMENTWISE,
  FLASH,
  GROUPED,
  GROUPED_SM90,
  LOSS,
  LOSS_SM90,
  MOE,
  OPTIM,
  RDEP,
];
