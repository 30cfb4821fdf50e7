/** `vmpod ps`: list sandboxes and their containers. */
import { Sandbox, type SandboxInfo } from '../../sandbox/sandbox.js';
import type { ContainerInfo } from '../../agent/messages.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { formatTable, printJson } from '../io.js';

/** A sandbox as `ps` lists it: its record, and the containers its agent reported. */
export type PsRow = SandboxInfo & { containers: ContainerInfo[] };

/**
 * `ps`'s table. The containers' ids and statuses come from the guest's agent: like every cell,
 * they are made printable on one line by {@link formatTable}.
 */
export function formatSandboxes(rows: readonly PsRow[]): string {
  return formatTable(
    ['SANDBOX', 'STATE', 'PID', 'CPUS', 'MEMORY', 'CREATED', 'CONTAINERS'],
    rows.map((r) => [
      r.id,
      r.state,
      r.pid === undefined ? '-' : String(r.pid),
      String(r.cpus),
      `${r.memoryMiB}M`,
      r.createdAt.replace('T', ' ').slice(0, 19),
      r.containers.map((c) => `${c.id}(${c.status})`).join(' ') || '-',
    ]),
  );
}

export const ps: Command = {
  words: ['ps'],
  summary: 'list sandboxes and their containers',
  usage: `Usage: vmpod ps [--json]

Lists every sandbox in the state directory with its state; for running sandboxes, the
containers in them (asked of each sandbox's agent).`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const sandboxes = await Sandbox.list();
    const rows: PsRow[] = [];
    for (const info of sandboxes) {
      let containers: ContainerInfo[] = [];
      if (info.state === 'running') {
        try {
          const sandbox = await Sandbox.attach(info.id);
          try {
            containers = await sandbox.containers({ signal: AbortSignal.timeout(5000) });
          } finally {
            sandbox.detach();
          }
        } catch {
          // all agent ports busy, or the VM just went: list the sandbox without its containers
        }
      }
      rows.push({ ...info, containers });
    }
    if (parsed.options['json']) {
      printJson(rows);
      return 0;
    }
    process.stdout.write(formatSandboxes(rows));
    return 0;
  },
};
