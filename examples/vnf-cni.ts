/**
 * A VNF on CNI networks: a sandbox attached to a CNI bridge network at boot, a long-running
 * "network function" container in it, and a second network hot plugged into the running VM
 * (a new NIC, configured by the guest agent) that the running container sees at once.
 *
 *   cd examples && node --import tsx vnf-cni.ts NET.conflist EXTRA.conflist [PEER1 [PEER2]]
 *
 * NET and EXTRA are CNI configuration lists (e.g. the bridge plugin with host-local IPAM; the
 * plugins in /opt/cni/bin or /usr/lib/cni). PEER1 and PEER2, when given, are addresses on each
 * network that the VNF pings. Needs the q35 machine (the default) for the hot plug.
 */
import { abortOnSignals, Sandbox } from 'vmpod';

const [netFile, extraFile, ...peers] = process.argv.slice(2);
if (!netFile || !extraFile) {
  console.error('usage: vnf-cni.ts NET.conflist EXTRA.conflist [PEER1 [PEER2]]');
  process.exit(2);
}
const signal = abortOnSignals();

// The network: vmpod makes a namespace (vmpod-ID), runs CNI ADD in it, and plugs the interface
// it got into the VM as a virtio-net NIC (tc redirect between the veth and a tap by default).
await using sandbox = await Sandbox.create({ memoryMiB: 256, network: { cni: [{ file: netFile }] } }, { signal });
await sandbox.start({ signal });
console.log(`eth0: ${(await sandbox.networks()).find((n) => n.name === 'eth0')?.addresses.join(' ')}`);

// The VNF: a process that runs until it is stopped (here a loop; in real life a router, a
// firewall, a DPDK application). Containers share the VM's network stack.
await using vnf = await sandbox.createContainer({ id: 'vnf', signal, process: { args: ['sh', '-c', 'trap "exit 0" TERM; while :; do sleep 1; done'] } });
await vnf.start({ signal });

// Hot plug a second network: CNI ADD of EXTRA, then QMP netdev_add/device_add of a new NIC,
// configured in the guest with the addresses and routes CNI gave.
const extra = await sandbox.addNetwork({ cni: { file: extraFile } }, { signal });
console.log(`${extra.name}: ${extra.addresses.join(' ')} (hot plugged)`);

// The running VNF sees both interfaces, without a restart.
const ip = await vnf.exec({ args: ['ip', '-o', '-4', 'addr', 'show'], signal });
ip.stdout!.pipe(process.stdout);
await ip.wait({ signal });

// Traffic over each network, if peers were given.
for (const peer of peers) {
  const ping = await sandbox.run(['ping', '-c', '3', '-W', '3', peer], { signal });
  console.log(`ping ${peer}: exit ${ping.exitCode}, ${/(\d+) packets received/u.exec(ping.stdout)?.[1] ?? 0} received`);
  if (ping.exitCode !== 0) process.exitCode = 1;
}

await vnf.kill('SIGTERM', { signal });
console.log(`vnf exited ${(await vnf.wait({ signal })).exitCode}`);
