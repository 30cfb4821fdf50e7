/** `vmpod network add|rm|ls|rescan`: the interfaces of a sandbox's network. */
import path from 'node:path';
import { Sandbox } from '../../sandbox/sandbox.js';
import type { SandboxInterfaceInfo } from '../../sandbox/resources/network.js';
import type { CniCheckOutcome } from '../../network/network.js';
import { MODELS, type InterNetworkModel } from '../../network/endpoints/endpoint.js';
import * as validate from '../../validate.js';
import { printableField } from '../../printable.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { formatTable, printJson, UsageError } from '../io.js';

async function withSandbox<T>(id: string | undefined, fn: (sandbox: Sandbox) => Promise<T>): Promise<T> {
  if (id === undefined) throw new UsageError('give a sandbox id');
  const sandbox = await Sandbox.attach(validate.id(id, 'ID'));
  try {
    return await fn(sandbox);
  } finally {
    sandbox.detach();
  }
}

/** The table of `network ls` and `network add` (each cell printable, see {@link formatTable}). */
export function formatInterfaces(list: readonly SandboxInterfaceInfo[]): string {
  return formatTable(
    ['NAME', 'KIND', 'MODEL', 'ORIGIN', 'MAC', 'MTU', 'QUEUES', 'ADDRESSES', 'NIC'],
    list.map((i) => [
      i.name,
      i.kind,
      i.model,
      i.origin === 'cni' ? `cni:${i.network}` : 'scan',
      i.mac,
      String(i.mtu),
      String(i.queues),
      i.addresses.join(',') || '-',
      i.plugged ? i.deviceId : '-',
    ]),
  );
}

function printInterfaces(list: readonly SandboxInterfaceInfo[]): void {
  process.stdout.write(formatInterfaces(list));
}

/**
 * `network check`'s lines: `IFNAME (NETWORK): ok`, `failed: MESSAGE` or `skipped: WHY`, one
 * line each whatever a plugin's error message holds (escaped by {@link printableField}).
 */
export function formatCheckOutcomes(outcomes: readonly CniCheckOutcome[]): string {
  return outcomes
    .map((o) => {
      const detail = o.status === 'failed' ? `: ${o.error?.message}` : o.status === 'skipped' ? `: ${o.reason}` : '';
      return `${printableField(`${o.ifName} (${o.network}): ${o.status}${detail}`)}\n`;
    })
    .join('');
}

export const networkAdd: Command = {
  words: ['network', 'add'],
  summary: 'add an interface to a running sandbox (CNI network or existing interface)',
  usage: `Usage: vmpod network add ID CONFLIST [--ifname NAME] [--model M] [--json]
       vmpod network add ID --interface NAME [--model M] [--address CIDR]... [--json]

Hot plugs a NIC into running sandbox ID (q35) and configures it in the guest. With CONFLIST
(a .conflist or .conf file), vmpod runs the CNI network's ADD in the sandbox's namespace and
plugs the interface it made; with --interface, it plugs an interface already in the namespace.

Options:
      --ifname NAME     CNI_IFNAME of the new interface (default: the first free ethN)
      --interface NAME  plug this interface of the namespace instead of running CNI
      --model M         inter-network model: ${MODELS.join(', ')} (default: the sandbox's)
      --address CIDR    guest address (repeatable), instead of those found on the interface
      --json            print the new interface as JSON`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      { long: 'ifname', type: 'string' },
      { long: 'interface', type: 'string' },
      { long: 'model', type: 'string' },
      { long: 'address', type: 'string', multiple: true },
    ],
  },
  async run(parsed) {
    const [id, file, extra] = parsed.positionals;
    const o = parsed.options;
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    if ((file === undefined) === (o['interface'] === undefined)) throw new UsageError('give either a CONFLIST file or --interface NAME');
    if (o['interface'] !== undefined && o['ifname'] !== undefined) throw new UsageError('--ifname names the interface a CNI network makes; with --interface it has no use');
    if (o['model'] !== undefined && !MODELS.includes(o['model'] as InterNetworkModel)) throw new UsageError(`--model must be one of ${MODELS.join(', ')}`);
    const info = await withSandbox(id, (sandbox) =>
      sandbox.addNetwork({
        ...(file === undefined
          ? { interface: String(o['interface']) }
          : { cni: { file: path.resolve(file), ...(typeof o['ifname'] === 'string' ? { ifName: o['ifname'] } : {}) } }),
        ...(typeof o['model'] === 'string' ? { model: o['model'] as InterNetworkModel } : {}),
        ...(Array.isArray(o['address']) ? { addresses: o['address'] } : {}),
      }),
    );
    if (o['json']) printJson(info);
    else printInterfaces([info]);
    return 0;
  },
};

export const networkRemove: Command = {
  words: ['network', 'rm'],
  summary: 'remove an interface from a running sandbox',
  usage: `Usage: vmpod network rm ID NAME

Unplugs interface NAME (or the interface of CNI network NAME) from running sandbox ID: the
guest lets go of the NIC, vmpod removes what it made for it, and runs CNI DEL for a CNI one.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const [id, name, extra] = parsed.positionals;
    if (name === undefined) throw new UsageError('give the interface (or CNI network) to remove');
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    await withSandbox(id, (sandbox) => sandbox.removeNetwork(name));
    return 0;
  },
};

export const networkList: Command = {
  words: ['network', 'ls'],
  summary: "list a sandbox's network interfaces",
  usage: `Usage: vmpod network ls ID [--json]

Lists the interfaces of sandbox ID: kind, inter-network model, where it came from (a CNI
network or the scan), the MAC, MTU and queues of its NIC, the guest's addresses.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const [id, extra] = parsed.positionals;
    if (id === undefined) throw new UsageError('give a sandbox id');
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    // From the sandbox's record: whatever its state.
    const list = await withSandbox(id, (sandbox) => sandbox.networks());
    if (parsed.options['json']) printJson(list);
    else printInterfaces(list);
    return 0;
  },
};

export const networkRescan: Command = {
  words: ['network', 'rescan'],
  summary: "scan a running sandbox's namespace again and plug what changed",
  usage: `Usage: vmpod network rescan ID [--json]

Scans the namespace of running sandbox ID: plugs interfaces that appeared, unplugs those that
went, and mirrors changed addresses and routes in the guest.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const [id, extra] = parsed.positionals;
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    const result = await withSandbox(id, (sandbox) => sandbox.rescanNetwork());
    if (parsed.options['json']) printJson(result);
    else process.stdout.write(`added: ${result.added.join(' ') || '-'}\nremoved: ${result.removed.join(' ') || '-'}\nupdated: ${result.updated.join(' ') || '-'}\n`);
    return 0;
  },
};

export const networkCheck: Command = {
  words: ['network', 'check'],
  summary: "run CNI CHECK for a running sandbox's CNI networks",
  usage: `Usage: vmpod network check ID [NAME] [--json]

Runs CNI CHECK, as cnitool check does, for each CNI network of running sandbox ID (or the one
of interface or network NAME): its plugins verify that what they made is still there. Prints
one line per network; exits 1 when a check failed.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const [id, name, extra] = parsed.positionals;
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    const outcomes = await withSandbox(id, (sandbox) => sandbox.checkNetwork(name));
    if (parsed.options['json']) {
      printJson(outcomes.map((o) => ({ ...o, ...(o.error ? { error: { code: (o.error as { code?: string }).code, message: o.error.message } } : {}) })));
    } else {
      process.stdout.write(formatCheckOutcomes(outcomes));
    }
    return outcomes.some((o) => o.status === 'failed') ? 1 : 0;
  },
};
