/** This machine and its processes, for records that must tell whether the process that wrote them still lives. */
import { hostname } from 'node:os';

export const HOST = hostname();

/** Whether process `pid` exists on this host (EPERM: it exists, owned by someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
