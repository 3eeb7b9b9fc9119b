/**
 * Finds and loads the NVIDIA shared libraries. Search order: NMOE_<LIB>_PATH (a file), LD_LIBRARY_PATH, the
 * ldconfig cache, CUDA_HOME / CUDA_PATH, /usr/local/cuda, and the lib folders of pip's nvidia-* wheels. A missing
 * library is an error that lists every place looked and says what to install or set.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import koffi, { type LibraryHandle } from 'koffi';
import { UserError } from '../../util/errors.ts';

export interface LibrarySpec {
  /** Short name for messages and the override variable (NMOE_<KEY>_PATH). */
  key: string;
  what: string;
  sonames: readonly string[];
  install: string;
}

export const LIBRARIES = {
  cuda: { key: 'CUDA', what: 'the CUDA driver', sonames: ['libcuda.so.1'], install: 'install the NVIDIA driver' },
  nvrtc: {
    key: 'NVRTC',
    what: 'NVRTC, the run-time CUDA compiler',
    sonames: ['libnvrtc.so.13', 'libnvrtc.so.12'],
    install: 'install the CUDA toolkit or `pip install nvidia-cuda-nvrtc`',
  },
  cublasLt: {
    key: 'CUBLASLT',
    what: 'cuBLASLt',
    sonames: ['libcublasLt.so.13', 'libcublasLt.so.12'],
    install: 'install the CUDA toolkit or `pip install nvidia-cublas`',
  },
  nccl: {
    key: 'NCCL',
    what: 'NCCL, the collectives library',
    sonames: ['libnccl.so.2'],
    install: 'install NCCL (Debian/Ubuntu: libnccl2) or `pip install nvidia-nccl-cu12`',
  },
  nvml: {
    key: 'NVML',
    what: 'NVML, the GPU management library',
    sonames: ['libnvidia-ml.so.1'],
    install: 'install the NVIDIA driver',
  },
  // Optional: attention runs on cuDNN's fused kernels where it is found (libcudnn.so.9 opens its engine libraries
  // from its own folder), and on nmoe's own kernels where it is not.
  cudnn: {
    key: 'CUDNN',
    what: 'cuDNN 9',
    sonames: ['libcudnn.so.9'],
    install:
      'install cuDNN 9 (Debian/Ubuntu: libcudnn9-cuda-12 or libcudnn9-cuda-13) or `pip install nvidia-cudnn-cu12`',
  },
} as const satisfies Record<string, LibrarySpec>;

export interface LoadedLibrary {
  lib: LibraryHandle;
  path: string;
}

/** The ldconfig cache (soname -> path), or null when no ldconfig could be run (it is often in /sbin, off PATH). */
function ldconfigPaths(): Map<string, string> | null {
  for (const bin of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    let out: string;
    try {
      out = execFileSync(bin, ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      continue;
    }
    const found = new Map<string, string>();
    for (const line of out.split('\n')) {
      const m = /^\s*(\S+) \(.*\) => (\S+)$/.exec(line);
      if (m && !found.has(m[1]!)) found.set(m[1]!, m[2]!);
    }
    return found;
  }
  return null;
}

/** `lib/` folders of Python installs that pip's nvidia-* wheels may sit in: a virtualenv or conda env, user and
 *  system site-packages, and virtualenvs one level under /opt (where images often put them). */
function pythonLibRoots(): string[] {
  const roots = [process.env.VIRTUAL_ENV, process.env.CONDA_PREFIX]
    .filter((d): d is string => !!d)
    .map((d) => join(d, 'lib'));
  roots.push(`${process.env.HOME ?? ''}/.local/lib`, '/usr/local/lib', '/usr/lib');
  if (existsSync('/opt')) {
    for (const d of readdirSync('/opt'))
      roots.push(join('/opt', d, '.venv/lib'), join('/opt', d, 'venv/lib'), join('/opt', d, 'lib'));
  }
  return roots;
}

function pipWheelDirs(): string[] {
  const dirs: string[] = [];
  for (const root of pythonLibRoots()) {
    if (!existsSync(root)) continue;
    for (const py of readdirSync(root).filter((d) => d.startsWith('python3'))) {
      for (const site of ['site-packages', 'dist-packages']) {
        const nvidia = join(root, py, site, 'nvidia');
        if (!existsSync(nvidia)) continue;
        for (const pkg of readdirSync(nvidia)) dirs.push(join(nvidia, pkg, 'lib'));
      }
    }
  }
  return dirs;
}

function searchDirs(): string[] {
  const cudaHomes = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter((d): d is string => !!d);
  return [
    ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    ...cudaHomes.flatMap((h) => [join(h, 'lib64'), join(h, 'targets/x86_64-linux/lib')]),
    '/usr/local/nvidia/lib64',
    '/usr/lib/x86_64-linux-gnu',
    ...pipWheelDirs(),
  ];
}

export function loadLibrary(spec: LibrarySpec): LoadedLibrary {
  const tried: string[] = [];
  const attempt = (path: string): LoadedLibrary | null => {
    if (path.includes('/') && !existsSync(path)) {
      tried.push(path);
      return null;
    }
    try {
      return { lib: koffi.load(path), path };
    } catch (err) {
      // A file that is there but does not load (wrong architecture, a missing dependency, not a library) is the
      // likely culprit: say what the loader said.
      tried.push(`${path} (found, but the loader said: ${(err as Error).message.replace(/\s+/g, ' ').trim()})`);
      return null;
    }
  };
  const override = process.env[`NMOE_${spec.key}_PATH`];
  if (override) {
    const r = attempt(override);
    if (r) return r;
  }
  const cache = ldconfigPaths();
  for (const soname of spec.sonames) {
    for (const dir of searchDirs()) {
      const r = attempt(join(dir, soname));
      if (r) return r;
    }
    const cached = cache?.get(soname);
    if (cached) {
      const r = attempt(cached);
      if (r) return r;
    }
  }
  const ldconfig = cache
    ? 'the ldconfig cache has no entry for it'
    : 'ldconfig could not be run (not on PATH, /sbin or /usr/sbin)';
  throw new UserError(
    `cannot load ${spec.what} (${spec.sonames.join(' or ')}). Looked in: ${tried.join(', ') || '(nowhere)'}; ${ldconfig}. ` +
      `Fix: ${spec.install}, or set NMOE_${spec.key}_PATH to the library file.`,
  );
}
