/** openSession: the backend on this rank's device, then the joined run (none on one rank); beforeJoin runs between. */
import { describe, expect, it } from 'vitest';
import { readDistEnv } from '../src/comm/env.ts';
import { openSession } from '../src/comm/session.ts';
import type { Selected } from '../src/tensor/select.ts';

const shape = { experts: 4, dim: 8, topK: 2, tokens: 16, exchanges: 2 };

describe('openSession', () => {
  it('opens the configured device and joins nothing on one rank', async () => {
    const seen: Selected[] = [];
    const s = await openSession({ device: 'cpu' }, readDistEnv({}), { shape, beforeJoin: (x) => seen.push(x) });
    expect(s.backend.device).toBe('cpu');
    expect(s.dist).toBeNull();
    expect(seen.map((x) => x.backend)).toEqual([s.backend]);
  });

  it('runs beforeJoin before the run is joined: a refusal there stops a rank before it waits for its peers', async () => {
    // Rank 1 of 2 whose rank 0 never comes: joining first would wait out the rendezvous timeout.
    const env = readDistEnv({ RANK: '1', WORLD_SIZE: '2', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '1' });
    const refused = openSession({ device: 'cpu' }, env, {
      shape,
      beforeJoin: () => {
        throw new Error('refused before joining');
      },
    });
    await expect(refused).rejects.toThrow('refused before joining');
  }, 10_000);
});
