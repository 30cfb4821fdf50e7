/**
 * A second Node process for the stand-in tests (test/privileged/sandbox/stand-in.test.ts):
 * attaches to a running stand-in sandbox, runs a container in it, pauses and resumes it (which
 * takes the hypervisor's `attach`), runs another container, and prints what it saw as one JSON
 * line. Run as `node --import tsx test/privileged/stand-in-attach.ts STATEDIR SANDBOXID`.
 */
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { collect } from './sandbox/fixture.js';
import { StandInHypervisor } from './stand-in-hypervisor.js';

const [stateDir, id] = process.argv.slice(2);
if (!stateDir || !id) {
  process.stderr.write('usage: stand-in-attach.ts STATEDIR SANDBOXID\n');
  process.exit(2);
}

async function echo(sandbox: Sandbox, text: string): Promise<string> {
  const c = await sandbox.createContainer({ process: { args: ['echo', text] } });
  const out = collect(c.stdout);
  await c.start();
  await c.wait();
  await c.delete();
  return (await out).toString();
}

const sandbox = await Sandbox.attach(id, { stateDir, hypervisor: new StandInHypervisor() });
const result: Record<string, unknown> = { pid: process.pid, state: sandbox.state };
result['first'] = await echo(sandbox, `from process ${process.pid}`);
await sandbox.pause();
result['paused'] = sandbox.state;
await sandbox.resume();
result['resumed'] = sandbox.state;
result['second'] = await echo(sandbox, 'again');
sandbox.detach();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
