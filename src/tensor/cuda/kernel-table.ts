/**
 * The typed host/kernel boundary. Each kernel file's kernels are declared once, beside it (kernels/<file>.ts), with
 * their parameters in the .cu's order, names and types; test/kernels-compile.test.ts checks every table against the
 * file's signatures. A launch passes a record of named values, typed from the table's `as const` declaration, and
 * kernelArgs puts them in order for packKernelArgs.
 */
import type { Tensor } from '../tensor.ts';
import type { KernelArg } from './kernel-args.ts';
import { KERNEL_CONSTANTS } from './kernel-constants.ts';
import { asCuda } from './tensor.ts';

/** Structs the kernels take by value, by their C++ names: size and alignment in bytes. */
export const STRUCTS = {
  /** grouped_sm90.cu: the driver's CUtensorMap, 128 opaque bytes (tensor-map.ts encodes them). */
  TmaMap: { bytes: 128, align: 128 },
  /** optim.cu: seven float[4] fields, one lane per optimizer group. */
  AdamGroups: { bytes: 7 * 4 * 4, align: 4 },
  /** rdep.cu: one device pointer per rank. */
  Peers: { bytes: 8 * KERNEL_CONSTANTS.RDEP_MAX_RANKS, align: 8 },
  /** swa.cu: batch, seq, heads, kv_heads, d, window (int), then scale (float). */
  SwaDims: { bytes: 7 * 4, align: 4 },
} as const;

/** ptr: a device pointer; i32 `int`, u32 `unsigned`, i64 `long` / `long long`, f32 `float`; or a struct by value. */
export type ScalarType = 'ptr' | 'i32' | 'u32' | 'i64' | 'f32';
export type ParamType = ScalarType | keyof typeof STRUCTS;
export type Param = readonly [name: string, type: ParamType];

/** The float types the dtype-templated kernels are built for (a kernel's `T`). */
export const FLOAT_TYPES = ['float', 'bf16'] as const;

export interface KernelSpec {
  readonly params: readonly Param[];
  /** The template's parameter names as the .cu declares them; absent for a plain kernel. */
  readonly template?: readonly string[];
  /**
   * Template arguments built with the file's first launch (a kernel's dtype variants, e.g. 'bf16'). A templated
   * kernel without them is instantiated on demand: each instance a launch names compiles alone, when first launched
   * (the tile-templated kernels, whose instances are costly to build and few of which a run uses).
   */
  readonly instances?: readonly string[];
  /** For an on-demand kernel: the template arguments the host can ask for, which the compile check builds. */
  readonly reachable?: readonly string[];
}

export interface KernelFile<K extends Record<string, KernelSpec> = Record<string, KernelSpec>> {
  readonly file: string;
  readonly kernels: K;
}

/** Declares a kernel file's table (use `as const` on the kernels so launches are typed by it). */
export function kernelFile<const K extends Record<string, KernelSpec>>(file: string, kernels: K): KernelFile<K> {
  return { file, kernels };
}

type ValueOf<T extends ParamType> = T extends 'ptr' ? Tensor | bigint : T extends ScalarType ? number : Uint8Array;

/** The record a launch of kernel S passes: one value per parameter, by name. */
export type KernelArgs<S extends KernelSpec> = { readonly [P in S['params'][number] as P[0]]: ValueOf<P[1]> };

/** The NVRTC name expression of `name` with template arguments `template` (null for a plain kernel). */
export function nameExpression(table: KernelFile, name: string, template: string | null): string {
  const spec = table.kernels[name];
  if (!spec) throw new Error(`kernel ${name} is not declared for ${table.file}`);
  if (!spec.template) {
    if (template !== null) throw new Error(`kernel ${name} (${table.file}) is not a template, got <${template}>`);
    return name;
  }
  if (template === null) throw new Error(`kernel ${name} (${table.file}) needs template arguments`);
  if (spec.instances ? !spec.instances.includes(template) : template.split(',').length !== spec.template.length)
    throw new Error(`kernel ${name}<${template}> is not declared for ${table.file}`);
  return `${name}<${template}>`;
}

/** The name expressions a file's module is built with on its first launch (the on-demand ones come later). */
export function declaredNames(table: KernelFile): string[] {
  return Object.entries(table.kernels).flatMap(([name, spec]) =>
    !spec.template ? [name] : (spec.instances ?? []).map((t) => `${name}<${t}>`),
  );
}

/**
 * The module a launch of `name<template>` takes its function from: the file's own (its plain kernels and declared
 * instances, built together) or, for an instance of an on-demand kernel, one of its own. `key` names the module.
 */
export function moduleFor(
  table: KernelFile,
  name: string,
  template: string | null,
): { expression: string; key: string; names: string[] } {
  const expression = nameExpression(table, name, template);
  const spec = table.kernels[name]!;
  return spec.template && !spec.instances
    ? { expression, key: `${table.file}:${expression}`, names: [expression] }
    : { expression, key: table.file, names: declaredNames(table) };
}

/** `values` in the kernel's parameter order, as packKernelArgs takes them. */
export function kernelArgs(name: string, spec: KernelSpec, values: Readonly<Record<string, unknown>>): KernelArg[] {
  const given = Object.keys(values).length;
  if (given !== spec.params.length)
    throw new Error(`kernel ${name} takes ${spec.params.length} arguments, ${given} were given`);
  return spec.params.map(([param, type]): KernelArg => {
    const v = values[param];
    if (v === undefined) throw new Error(`kernel ${name}: no value for parameter ${param}`);
    switch (type) {
      case 'ptr':
        return { ptr: typeof v === 'bigint' ? v : asCuda(v as Tensor).ptr };
      case 'i32':
        return { i32: v as number };
      case 'u32':
        return { u32: v as number };
      case 'i64':
        return { i64: v as number };
      case 'f32':
        return { f32: v as number };
      default: {
        const { bytes, align } = STRUCTS[type];
        const data = v as Uint8Array;
        if (data.length !== bytes)
          throw new Error(`kernel ${name}: ${param} (${type}) is ${data.length} bytes, the kernel takes ${bytes}`);
        return { bytes: data, align };
      }
    }
  });
}
