/**
 * One cycle of the soak (test/soak/soak.ts), in its own process so that the soak can kill it:
 * create a sandbox, start it, run a container of a bundle through the share and exec into it,
 * delete the sandbox. Prints `done` at the end. Run as `node --import tsx cycle.ts JSON`.
 */
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { SandboxConfig } from '../../src/sandbox/config.js';
import { standInSandboxConfig } from '../privileged/stand-in-hypervisor.js';

interface CycleArgs {
  stateDir: string;
  id: string;
  bundle: string;
  standIn: boolean;
  extra: Partial<SandboxConfig>;
}

const args = JSON.parse(process.argv[2] ?? '{}') as CycleArgs;
const sandbox = await Sandbox.create({ ...(args.standIn ? standInSandboxConfig() : {}), ...args.extra, stateDir: args.stateDir, id: args.id });
await sandbox.start();
const c = await sandbox.createContainer({ id: 'work', bundle: args.bundle });
await c.start();
const exec = await c.exec({ args: ['sh', '-c', 'echo alive'] });
const chunks: Buffer[] = [];
for await (const chunk of exec.stdout!) chunks.push(chunk as Buffer);
if ((await exec.wait()).exitCode !== 0 || Buffer.concat(chunks).toString() !== 'alive\n') throw new Error('the exec did not answer');
await sandbox.delete({ force: true, timeoutMs: 2000 });
process.stdout.write('done\n');
process.exit(0);
