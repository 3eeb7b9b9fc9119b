/** Parsing of whole-number command-line flags, one way for every command. */
import { parseWhole } from '../dist/env.ts';
import { UserError } from '../util/errors.ts';

/** `text`, the value of `flag`, as a whole number >= `min` (digits only), or a one-line error with `fix`. */
export function wholeFlag(flag: string, text: string, min: number, fix = `e.g. ${flag} ${Math.max(min, 10)}`): number {
  const value = parseWhole(text);
  if (value === undefined || value < min) throw new UserError(`${flag} ${text} is not a whole number >= ${min}. Fix: ${fix}.`);
  return value;
}

/** A commander option parser for `wholeFlag`. */
export const wholeOption = (flag: string, min: number) => (text: string) => wholeFlag(flag, text, min);
