/**
 * Volumes: a host directory shared into the guest (virtio-fs), a tmpfs in guest RAM, and guest
 * hugepages. One container writes to all three; a second one reads what the first left in the
 * tmpfs (it belongs to the sandbox, not the container); the host reads the shared directory.
 *
 *   cd examples && node --import tsx volumes.ts [HOST_DIR]
 *
 * HOST_DIR (default: a new temporary folder, removed at the end) is shared read-write.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { abortOnSignals, Sandbox, Volume } from 'vmpod';

const signal = abortOnSignals();
const given = process.argv[2];
const hostDir = given ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'vmpod-example-')));

try {
  const data = Volume.directory('data', hostDir); // read-write; { readOnly: true } for read-only
  const scratch = Volume.tmpfs('scratch', { sizeMiB: 16 });
  const huge = Volume.hugepages('huge', 4); // 2 x 2 MiB pages, reserved by the guest kernel at boot

  await using sandbox = await Sandbox.create({ memoryMiB: 256, volumes: [data, scratch, huge] }, { signal });
  await sandbox.start({ signal });
  for (const v of await sandbox.volumes()) console.log(`volume ${v.spec.name} (${v.spec.kind}) at ${v.guestPath} in the guest`);

  // Containers mount volumes by name, where they like.
  const volumes = [data.at('/data'), scratch.at('/scratch'), huge.at('/huge')];
  const writer = await sandbox.run(
    {
      volumes,
      args: ['sh', '-c', 'echo "written in $(uname -r)" > /data/from-guest.txt && echo kept > /scratch/note && df -k /huge | tail -1 && grep /huge /proc/mounts'],
    },
    { signal },
  );
  process.stdout.write(writer.stdout);
  if (writer.exitCode !== 0) throw new Error(`writer failed (${writer.exitCode}): ${writer.stderr}`);

  const reader = await sandbox.run({ volumes, args: ['cat', '/scratch/note'] }, { signal });
  console.log(`second container read from the tmpfs: ${reader.stdout.trim()}`);
  console.log(`host read from ${path.join(hostDir, 'from-guest.txt')}: ${(await fs.readFile(path.join(hostDir, 'from-guest.txt'), 'utf8')).trim()}`);
} finally {
  if (!given) await fs.rm(hostDir, { recursive: true, force: true });
}
