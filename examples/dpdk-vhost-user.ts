/**
 * A DPDK-style guest: guest RAM on host hugepages (shared, so a vhost-user backend can map it),
 * a vhost-user NIC connected to a DPDK backend on the host (OVS-DPDK, VPP, testpmd), and guest
 * hugepages mounted into the container for a DPDK application. The container configures the
 * NIC and pings across it.
 *
 *   cd examples && node --import tsx dpdk-vhost-user.ts SOCKET BUNDLE [ADDRESS PEER]
 *
 * SOCKET is the backend's vhost-user socket (the backend listens: server mode). BUNDLE is an OCI
 * bundle whose process may configure interfaces (CAP_NET_ADMIN), e.g. one made with `runc spec`
 * around a busybox rootfs. ADDRESS and PEER default to 192.0.2.1/24 and 192.0.2.2.
 * For a try with testpmd answering pings (root, 2 MiB hugepages reserved):
 *   dpdk-testpmd --no-pci --vdev net_vhost0,iface=/tmp/vhost0.sock -- -i --forward-mode=icmpecho --auto-start
 */
import { abortOnSignals, Sandbox, Volume } from 'vmpod';

const [socket, bundle, address = '192.0.2.1/24', peer = '192.0.2.2'] = process.argv.slice(2);
if (!socket || !bundle) {
  console.error('usage: dpdk-vhost-user.ts SOCKET BUNDLE [ADDRESS PEER]');
  process.exit(2);
}
const signal = abortOnSignals();

await using sandbox = await Sandbox.create(
  {
    memoryMiB: 256,
    hugepages: { prealloc: true }, // guest RAM from the host's 2 MiB pages, reserved for this boot
    vhostUser: [{ id: 'vnic0', socket, mac: '52:54:00:12:34:01' }], // QEMU is the vhost-user client
    volumes: [Volume.hugepages('hp', 8)], // 8 MiB of guest hugepages for the application
  },
  { signal },
);
await sandbox.start({ signal });

// Where the NIC is in the guest: its PCI address and the interface the kernel made of it.
const nic = (await sandbox.devices()).vhostUser.find((n) => n.id === 'vnic0');
const ifname = nic?.guest?.netdevs[0];
console.log(`vnic0: guest PCI ${nic?.guest?.pciAddress}, interface ${ifname}`);
if (!ifname) throw new Error('the guest has no interface for vnic0');

// The application: here busybox configures the NIC and pings the peer through the backend, and
// checks the hugepages volume is mounted where DPDK looks (a DPDK app would take the NIC with its own driver).
const app = await sandbox.run(
  {
    bundle,
    volumes: [{ volume: 'hp', destination: '/dev/hugepages' }], // where DPDK looks by default
    args: ['sh', '-c', `ip link set ${ifname} up && ip addr add ${address} dev ${ifname} && ping -c 3 -W 3 ${peer} && grep HugePages_Total /proc/meminfo && grep -c ' /dev/hugepages hugetlbfs ' /proc/mounts`],
  },
  { signal, timeoutMs: 120_000 },
);
process.stdout.write(app.stdout);
process.stderr.write(app.stderr);
console.log(`app: exit ${app.exitCode}`);
process.exitCode = app.exitCode;
