/**
 * The cluster files in deploy/: every Kubernetes manifest parses and validates against the Kubernetes API's schemas
 * (test/helpers/k8s-schema.ts) and wires nmoe's environment contract as docs/cluster.md says, and the training Job's
 * launch command trains as two local "pods"; the Dockerfiles pass the linter (test/helpers/dockerfile-lint.ts); the
 * Slurm script runs a real 2-node CPU job through stand-ins for srun and scontrol. No container engine runs here, so
 * no image is built (docs/cluster.md says what that leaves).
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { dockerignoreFilter, lintDockerfile, parseDockerfile } from './helpers/dockerfile-lint.ts';
import { type Manifest, loadManifests, schemaProblems } from './helpers/k8s-schema.ts';
import { BASE_ENV, freePort } from './helpers/ranks.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const K8S = join(ROOT, 'deploy/k8s');
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const MANIFEST_FILES = readdirSync(K8S)
  .filter((f) => f.endsWith('.yaml'))
  .sort();

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: EnvVar[];
  ports?: { name?: string; containerPort: number }[];
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  subdomain?: string;
  containers: Container[];
  volumes?: { name: string; emptyDir?: { medium?: string; sizeLimit?: string } }[];
}
type Workload = Manifest & {
  spec: { completionMode?: string; completions?: number; parallelism?: number; template: { spec: PodSpec } };
};
type ServiceManifest = Manifest & {
  spec: {
    type?: string;
    clusterIP?: string;
    selector: Record<string, string>;
    ports: { port: number; targetPort?: string | number }[];
  };
};

const manifests = (file: string) => loadManifests(join(K8S, file));

function run(command: string, args: string[], env: Record<string, string>, cwd = ROOT) {
  return new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(command, args, { cwd, env: { ...BASE_ENV, ...env } });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code, out }));
  });
}

/** tiny.toml for 2 steps on the CPU, its outputs under `out`: the 2-node walk-through of docs/cluster.md, shortened. */
const tinyCpuRun = (out: string) => [
  join(ROOT, 'configs/tiny.toml'),
  '--device=cpu',
  '--steps=2',
  '--log_every=1',
  `--checkpoint_dir=${out}/ckpt`,
  `--metrics_dir=${out}/metrics`,
  `--experiments_db=${out}/experiments.db`,
];

/** Every rank wrote into one run: rank 1's file exists only if the two nodes' launchers formed one world. */
function expectOneRunOfTwoRanks(out: string): void {
  const [runId, ...others] = readdirSync(join(out, 'metrics'));
  expect(others).toEqual([]);
  expect(readdirSync(join(out, 'metrics', runId!)).sort()).toEqual(['rank_0.duckdb', 'rank_1.duckdb']);
}
const find = <T extends Manifest>(file: string, kind: string) => manifests(file).find((m) => m.kind === kind) as T;
const envOf = (c: Container, name: string) => c.env?.find((e) => e.name === name);

describe('Kubernetes manifests', () => {
  it('are the four that docs/cluster.md walks through', () => {
    expect(MANIFEST_FILES).toEqual(['data-pvc.yaml', 'profile-job.yaml', 'train-indexed-job.yaml', 'viz.yaml']);
  });

  it.each(MANIFEST_FILES)(
    '%s parses and validates against the Kubernetes API schemas, unknown fields included',
    (file) => {
      const docs = manifests(file);
      expect(docs.length).toBeGreaterThan(0);
      expect(docs.flatMap(schemaProblems)).toEqual([]);
    },
  );

  it('the schema check catches wrong types, missing and misspelled fields, and bad enum values', () => {
    const job = find<Workload>('train-indexed-job.yaml', 'Job');
    const pod = job.spec.template.spec;
    const broken = {
      ...job,
      spec: {
        ...job.spec,
        completions: 'two',
        completionMode: 'Indexd',
        parralelism: 2,
        template: {
          spec: {
            ...pod,
            containers: [{ ...pod.containers[0], name: undefined, resourcez: {} }],
            volumes: [{ name: 'shm', emptyDir: { medium: 'Memory', sizeLimt: '1Gi' } }],
          },
        },
      },
    } as unknown as Manifest;
    const problems = schemaProblems(JSON.parse(JSON.stringify(broken)) as Manifest);
    expect(problems).toEqual(
      expect.arrayContaining([
        'Job/nmoe-train: spec/completions must be integer',
        'Job/nmoe-train: spec/completionMode must be equal to one of the allowed values',
        'Job/nmoe-train: spec/template/spec/containers/0 must have required property name',
        'Job/nmoe-train: spec/parralelism is not a field of the Kubernetes API',
        'Job/nmoe-train: spec/template/spec/containers/0/resourcez is not a field of the Kubernetes API',
        'Job/nmoe-train: spec/template/spec/volumes/0/emptyDir/sizeLimt is not a field of the Kubernetes API',
      ]),
    );
    expect(schemaProblems({ apiVersion: 'jobset.x-k8s.io/v1alpha2', kind: 'JobSet', metadata: { name: 'x' } })).toEqual(
      [
        'JobSet/x: apiVersion jobset.x-k8s.io/v1alpha2, kind JobSet has no schema here (add its kubernetes-models class to MODELS)',
      ],
    );
  });

  it('a YAML syntax error names the file and line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nmoe-k8s-'));
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'kind: Job\nspec:\n  completions: [1\n');
    expect(() => loadManifests(bad)).toThrow(new RegExp(`^${bad}:\\d+:\\d+: `));
    rmSync(dir, { recursive: true });
  });

  const workloads = MANIFEST_FILES.flatMap((file) =>
    manifests(file)
      .filter((m) => m.kind === 'Job' || m.kind === 'Deployment')
      .map((m) => [file, m as Workload] as const),
  );
  it.each(workloads.map(([file, m]) => [`${file} ${m.kind}/${m.metadata.name}`, m] as const))(
    "%s: requests cpu and memory, runs this version's image, defines every $(VAR) it uses",
    (_, workload) => {
      for (const c of workload.spec.template.spec.containers) {
        expect(c.resources?.requests, c.name).toMatchObject({ cpu: expect.anything(), memory: expect.anything() });
        expect(c.image).toMatch(new RegExp(`^nmoe/(train|viz|profile):${VERSION.replace(/\./g, '\\.')}$`));
        const used = [...(c.command ?? []), ...(c.args ?? [])].join(' ').match(/\$\(([A-Z_][A-Z0-9_]*)\)/g) ?? [];
        // Kubernetes leaves a $(VAR) that names no env var of the container as it is, text and all.
        for (const ref of used) expect(envOf(c, ref.slice(2, -1)), `${ref} in ${c.name}`).toBeDefined();
      }
    },
  );

  it('the training Job maps each pod to a node of one nmoe launch, as the env contract needs', () => {
    const job = find<Workload>('train-indexed-job.yaml', 'Job');
    const service = find<ServiceManifest>('train-indexed-job.yaml', 'Service');
    const pod = job.spec.template.spec;
    const [train] = pod.containers;
    const value = (name: string) => envOf(train!, name)?.value;

    expect(job.spec.completionMode).toBe('Indexed');
    // One launcher per pod, one pod per node: --nnodes, the pod count and the pods running at once agree.
    expect(job.spec.completions).toBe(Number(value('NNODES')));
    expect(job.spec.parallelism).toBe(Number(value('NNODES')));
    // One rank per GPU of the pod.
    expect(train!.resources?.limits?.['nvidia.com/gpu']).toBe(Number(value('NPROC_PER_NODE')));
    // The completion index is the node rank.
    expect(envOf(train!, 'NODE_RANK')?.valueFrom?.fieldRef?.fieldPath).toBe(
      "metadata.annotations['batch.kubernetes.io/job-completion-index']",
    );
    expect(train!.args).toEqual(
      expect.arrayContaining([
        'launch',
        '--nproc-per-node=$(NPROC_PER_NODE)',
        '--nnodes=$(NNODES)',
        '--node-rank=$(NODE_RANK)',
        '--master-addr=$(MASTER_ADDR)',
        '--master-port=$(MASTER_PORT)',
      ]),
    );
    expect(train!.args![0]).toBe('launch');
    // Pod 0 hosts the store, by its stable name under the headless Service.
    expect(service.spec.clusterIP).toBe('None');
    expect(service.spec.selector).toEqual({ 'job-name': job.metadata.name });
    expect(pod.subdomain).toBe(service.metadata.name);
    expect(value('MASTER_ADDR')).toBe(`${job.metadata.name}-0.${service.metadata.name}`);
    expect(service.spec.ports.map((p) => p.port)).toEqual([Number(value('MASTER_PORT'))]);
    // NCCL's shared memory: /dev/shm from a memory-backed emptyDir.
    const shm = train!.volumeMounts?.find((m) => m.mountPath === '/dev/shm');
    expect(pod.volumes?.find((v) => v.name === shm?.name)?.emptyDir).toMatchObject({
      medium: 'Memory',
      sizeLimit: expect.any(String),
    });
    expect(train!.volumeMounts?.find((m) => m.mountPath === '/data')).toBeDefined();
  });

  it('the dashboard listens on loopback only, behind a ClusterIP Service for port-forwarding', () => {
    const deployment = find<Workload>('viz.yaml', 'Deployment');
    const service = find<ServiceManifest>('viz.yaml', 'Service');
    const [viz] = deployment.spec.template.spec.containers;
    const args = viz!.args!;
    expect(args[args.indexOf('--host') + 1]).toBe('127.0.0.1');
    expect(service.spec.type).toBe('ClusterIP');
    expect(viz!.ports?.map((p) => p.name)).toContain(service.spec.ports[0]!.targetPort);
    expect(viz!.ports?.[0]?.containerPort).toBe(Number(args[args.indexOf('--port') + 1]));
  });

  it("the Job's nmoe launch, run as its two pods on this machine (one CPU rank each), makes one run of 2 nodes", async () => {
    const [train] = find<Workload>('train-indexed-job.yaml', 'Job').spec.template.spec.containers;
    const launch = train!.args!.slice(
      0,
      train!.args!.findIndex((a, i) => i > 0 && !a.startsWith('--')),
    );
    const out = mkdtempSync(join(tmpdir(), 'nmoe-k8s-job-'));
    const port = String(await freePort());
    const pods = [0, 1].map((index) => {
      // What the pod's env gives, with this machine standing in for pod 0's DNS name and the GPUs.
      const env: Record<string, string> = Object.fromEntries(
        (train!.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]),
      );
      Object.assign(env, {
        NODE_RANK: String(index),
        NPROC_PER_NODE: '1',
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: port,
      });
      const args = launch.map((a) => a.replace(/\$\(([A-Z_0-9]+)\)/g, (_, name: string) => env[name]!));
      return run(process.execPath, [join(ROOT, 'bin/nmoe.js'), ...args, ...tinyCpuRun(out)], env);
    });
    for (const pod of await Promise.all(pods)) expect(pod.code, pod.out).toBe(0);
    expectOneRunOfTwoRanks(out);
    rmSync(out, { recursive: true });
  });

  it('the profiling Job runs nmoe bench train under nsys on one GPU, writing to the shared volume', () => {
    const [profile] = find<Workload>('profile-job.yaml', 'Job').spec.template.spec.containers;
    const script = profile!.args!.join(' ');
    expect(script).toMatch(
      /exec nsys profile .*--output=\/data\/profiles\/\S+ nmoe bench train \/opt\/nmoe\/configs\/bench\/moonlet6\.toml/,
    );
    expect(profile!.resources?.limits?.['nvidia.com/gpu']).toBe(1);
  });
});

describe('Dockerfiles', () => {
  const contextHas = dockerignoreFilter(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
  const read = (file: string) => readFileSync(join(ROOT, file), 'utf8');

  it.each(['deploy/Dockerfile', 'deploy/viz.Dockerfile'])('%s passes the linter', (file) => {
    expect(lintDockerfile(file, read(file), ROOT, contextHas)).toEqual([]);
  });

  it('the linter catches unpinned and :latest bases, ADD, unchecked downloads, root, no health check, fat apt layers, missing files, trailing comments', () => {
    const bad = [
      'FROM ubuntu',
      'FROM node:latest AS app',
      'ADD https://example.org/x.tar.gz /x',
      'RUN curl -fsSLO https://example.org/x.tar.gz && tar xf x.tar.gz',
      'RUN curl -fsSL https://example.org/install.sh | sh',
      'RUN apt-get update && apt-get install -y g++',
      'COPY no-such-file /x',
      'COPY node_modules /x',
      'ENTRYPOINT ["nmoe"]',
      '',
      'FROM app AS quiet',
      'USER root',
      'HEALTHCHECK NONE',
      'WORKDIR /data # where runs go',
    ].join('\n');
    expect(lintDockerfile('bad.Dockerfile', bad, ROOT, contextHas).map((p) => p.replace(/\. Fix: .*/, ''))).toEqual([
      'bad.Dockerfile:1: FROM ubuntu has no tag, so it means whatever :latest is on the day of the build',
      'bad.Dockerfile:2: FROM node:latest uses :latest, which moves',
      'bad.Dockerfile:3: ADD fetches URLs and unpacks archives unchecked',
      'bad.Dockerfile:4: downloads with curl or wget without checking a SHA-256',
      'bad.Dockerfile:5: downloads with curl or wget without checking a SHA-256',
      'bad.Dockerfile:5: pipes a download into a shell',
      'bad.Dockerfile:6: apt-get install without --no-install-recommends pulls in packages nobody asked for',
      'bad.Dockerfile:6: apt-get install leaves the package lists in the layer',
      'bad.Dockerfile:7: COPY no-such-file: no such file in the repository',
      'bad.Dockerfile:8: COPY node_modules: .dockerignore leaves it out of the build context',
      'bad.Dockerfile:14: WORKDIR /data # where runs go: a # after an instruction is no comment in a Dockerfile, it becomes part of the value',
      'bad.Dockerfile:2: stage app runs as root: it sets no USER',
      'bad.Dockerfile:2: stage app has no HEALTHCHECK',
      'bad.Dockerfile:12: stage quiet ends as root (USER root)',
      'bad.Dockerfile:13: HEALTHCHECK NONE without a reason',
    ]);
  });

  it('the trainer image: a CUDA runtime base with cuDNN, production dependencies only, /data, entrypoint nmoe', () => {
    const ins = parseDockerfile(read('deploy/Dockerfile'));
    const args = (keyword: string) => ins.filter((i) => i.keyword === keyword).map((i) => i.args);
    expect(args('FROM')[0]).toMatch(/^nvidia\/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+ AS node$/);
    expect(args('RUN').some((a) => /\bnpm ci --omit=dev\b/.test(a))).toBe(true);
    expect(args('VOLUME')).toEqual(['/data']);
    expect(args('ENTRYPOINT')).toEqual(['["nmoe"]', '["nsys"]']);
    expect(
      parseDockerfile(read('deploy/viz.Dockerfile'))
        .filter((i) => i.keyword === 'ENTRYPOINT')
        .map((i) => i.args),
    ).toEqual(['["nmoe", "viz"]']);
  });

  it('Node.js comes from the official tarball, its SHA-256 pinned for each architecture and checked', () => {
    const script = read('deploy/install-node.sh');
    expect(script).toMatch(/x86_64\) arch=x64 sha256=[0-9a-f]{64} ;;/);
    expect(script).toMatch(/aarch64\) arch=arm64 sha256=[0-9a-f]{64} ;;/);
    expect(script).toContain('https://nodejs.org/dist/v${NODE_VERSION}/${tarball}');
    expect(script.indexOf('sha256sum --check')).toBeLessThan(script.indexOf('tar --extract'));
  });

  it('.dockerignore keeps the build context to what the images copy', () => {
    for (const kept of [
      'package.json',
      'package-lock.json',
      '.npmrc',
      'bin/nmoe.js',
      'src/cli/main.ts',
      'configs/tiny.toml',
      'data',
      'viz-dist',
      'deploy/install-node.sh',
    ]) {
      expect(contextHas(kept), kept).toBe(true);
    }
    for (const left of [
      'node_modules',
      'node_modules/koffi/index.js',
      '.git',
      'test/deploy.test.ts',
      'runs/metrics',
      'deploy/k8s/viz.yaml',
      'dev/LOG.md',
    ]) {
      expect(contextHas(left), left).toBe(false);
    }
  });
});

describe('Slurm: deploy/slurm/train.sbatch', () => {
  const SCRIPT = join(ROOT, 'deploy/slurm/train.sbatch');
  const work = mkdtempSync(join(tmpdir(), 'nmoe-slurm-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  const sbatch = (args: string[], env: Record<string, string>) => run('bash', [SCRIPT, ...args], env, work);

  it('is valid bash', async () => {
    const r = await run('bash', ['-n', SCRIPT], {});
    expect(r.code, r.out).toBe(0);
  });

  it('without a config, prints its usage and exits 2', async () => {
    const r = await sbatch([], {});
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/^usage: sbatch \[--nodes=N\] deploy\/slurm\/train\.sbatch CONFIG\.toml/);
  });

  it('runs one nmoe launch per node: a 2-node CPU job through stand-ins for srun and scontrol makes one run of 2 ranks', async () => {
    // srun's stand-in starts its command once per node, in parallel, with the variables srun sets for a step task.
    const bin = join(work, 'bin');
    const fake = (name: string, body: string) => {
      writeFileSync(join(bin, name), `#!/bin/bash\n${body}\n`);
      chmodSync(join(bin, name), 0o755);
    };
    mkdirSync(bin);
    fake('scontrol', '[ "$1 $2" = "show hostnames" ] && echo 127.0.0.1');
    fake(
      'srun',
      [
        'while [[ $1 == --* ]]; do shift; done',
        'pids=()',
        'for ((node = 0; node < SLURM_JOB_NUM_NODES; node++)); do',
        '  SLURM_NODEID=$node SLURM_NNODES=$SLURM_JOB_NUM_NODES SLURM_PROCID=$node SLURM_LOCALID=0 \\',
        '    SLURM_STEP_NUM_TASKS=$SLURM_JOB_NUM_NODES SLURM_STEP_TASKS_PER_NODE="1(x$SLURM_JOB_NUM_NODES)" "$@" &',
        '  pids+=($!)',
        'done',
        'status=0; for pid in "${pids[@]}"; do wait "$pid" || status=$?; done; exit $status',
      ].join('\n'),
    );
    const out = join(work, 'out');
    const r = await sbatch(tinyCpuRun(out), {
      PATH: `${bin}:${process.env.PATH}`,
      NMOE: join(ROOT, 'bin/nmoe.js'),
      NPROC_PER_NODE: '1',
      MASTER_PORT: String(await freePort()),
      SLURM_JOB_ID: '77',
      SLURM_JOB_NUM_NODES: '2',
      SLURM_NNODES: '2',
      SLURM_JOB_NODELIST: 'node[1-2]',
      SLURM_PROCID: '0',
      SLURM_NTASKS: '2',
    });
    expect(r.code, r.out).toBe(0);
    expectOneRunOfTwoRanks(out);
  });
});
