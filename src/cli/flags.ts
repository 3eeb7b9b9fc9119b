/** Parsing of numeric command-line flags, one way for every command. */
import { parseWhole } from '../comm/env.ts';
import { UserError } from '../util/errors.ts';

/** `text`, the value of `flag`, as a whole number >= `min` (digits only), or a one-line error with `fix`. */
export function wholeFlag(flag: string, text: string, min: number, fix = `e.g. ${flag} ${Math.max(min, 10)}`): number {
  const value = parseWhole(text);
  if (value === undefined || value < min)
    throw new UserError(`${flag} ${text} is not a whole number >= ${min}. Fix: ${fix}.`);
  return value;
}

/** A commander option parser for `wholeFlag`. */
export const wholeOption = (flag: string, min: number) => (text: string) => wholeFlag(flag, text, min);

/** `text`, the value of `flag`, as a number in [min, max], or a one-line error with the range and `example`. */
export function numberFlag(flag: string, text: string, min: number, max: number, example: number): number {
  const value = text.trim() === '' ? NaN : Number(text);
  if (!(value >= min && value <= max))
    throw new UserError(`${flag} ${text} is not a number in [${min}, ${max}]. Fix: e.g. ${flag} ${example}.`);
  return value;
}

/** A commander option parser for `numberFlag`. */
export const numberOption = (flag: string, min: number, max: number, example: number) => (text: string) =>
  numberFlag(flag, text, min, max, example);

/** A commander option parser for --device: auto, cpu or cuda. */
export function deviceOption(text: string): 'auto' | 'cpu' | 'cuda' {
  if (text !== 'auto' && text !== 'cpu' && text !== 'cuda')
    throw new UserError(`--device ${text} is not a device. Fix: auto, cpu or cuda.`);
  return text;
}
