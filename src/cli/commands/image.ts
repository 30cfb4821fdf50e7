/** `vmpod image ls|inspect|rm|prune`: the image store (docs/images.md). */
import { Image, type UnpackProgress } from '../../image/image.js';
import type { ImageRecord } from '../../image/store.js';
import { printableField } from '../../printable.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { formatTable, printJson, UsageError } from '../io.js';

/** The image transports `vmpod run` takes in place of a bundle or rootfs directory. */
export const IMAGE_TRANSPORTS = ['oci:', 'oci-archive:', 'docker-archive:'] as const;

/** The argument names an image (`oci:DIR[:REF]`, `oci-archive:FILE[:REF]`, `docker-archive:FILE[...]`). */
export function isImageReference(arg: string): boolean {
  return IMAGE_TRANSPORTS.some((t) => arg.startsWith(t));
}

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

/** The stderr line of an unpack's progress event. */
export function progressLine(reference: string, p: UnpackProgress): string {
  const what = p.phase === 'cached' ? 'in the store' : p.phase === 'done' ? `unpacked (${mib(p.bytes)})` : `unpacking ${mib(p.bytes)}`;
  return `image ${reference}: layer ${p.layer}/${p.layers} ${p.diffId.slice(7, 19)} ${what}`;
}

function shortId(id: string): string {
  return id.slice(7, 19);
}

/** `image ls`'s table. */
export function formatImages(records: readonly ImageRecord[]): string {
  return formatTable(
    ['ID', 'REFERENCES', 'LAYERS', 'SIZE', 'PLATFORM', 'LAST USED'],
    records.map((r) => [
      shortId(r.id),
      r.references.join(', ') || '-',
      String(r.diffIds.length),
      mib(r.layerSizes.reduce((a, b) => a + b, 0)),
      r.platform,
      r.lastUsed.replace('T', ' ').slice(0, 19),
    ]),
  );
}

function oneImage(positionals: string[]): string {
  if (positionals.length !== 1) throw new UsageError('give exactly one image (a reference it was opened from, or its id)');
  return positionals[0]!;
}

export const imageList: Command = {
  words: ['image', 'ls'],
  summary: 'list the images of the image store',
  usage: `Usage: vmpod image ls [--json]

Lists the images unpacked in the image store ($VMPOD_IMAGE_DIR, default /var/lib/vmpod/images):
their id (the manifest's digest), the references they were opened from, their layers, the size
of their layer blobs, their platform and when a container last used them.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    if (parsed.positionals.length > 0) throw new UsageError('image ls takes no arguments');
    const records = await Image.list();
    if (parsed.options['json']) printJson(records);
    else process.stdout.write(formatImages(records));
    return 0;
  },
};

export const imageInspect: Command = {
  words: ['image', 'inspect'],
  summary: 'show a stored image (config, layers, references)',
  usage: `Usage: vmpod image inspect [--json] REF|ID

Shows a stored image: REF is a reference it was opened from (oci:DIR:TAG, ...), ID its id
(sha256:..., or at least 12 hex digits of it) or its chain id.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    const record = await Image.inspect(oneImage(parsed.positionals));
    if (parsed.options['json']) {
      printJson(record);
      return 0;
    }
    const c = (record.config as { config?: Record<string, unknown> } | undefined)?.config ?? {};
    const lines = [
      `id:         ${record.id}`,
      `config:     ${record.configDigest}`,
      `chain id:   ${record.chainId}`,
      `platform:   ${record.platform}`,
      `references: ${record.references.join(', ') || '-'}`,
      `entrypoint: ${JSON.stringify(c['Entrypoint'] ?? null)}`,
      `cmd:        ${JSON.stringify(c['Cmd'] ?? null)}`,
      `user:       ${JSON.stringify(c['User'] ?? '')}`,
      `workdir:    ${JSON.stringify(c['WorkingDir'] ?? '')}`,
      `layers:`,
      ...record.diffIds.map((d, i) => `  ${i + 1}. ${d} (${mib(record.layerSizes[i] ?? 0)})`),
      `created:    ${record.createdAt}`,
      `last used:  ${record.lastUsed}`,
    ];
    process.stdout.write(lines.map((l) => `${printableField(l)}\n`).join(''));
    return 0;
  },
};

export const imageRemove: Command = {
  words: ['image', 'rm'],
  summary: 'remove an image from the image store',
  usage: `Usage: vmpod image rm [--force] REF|ID

Removes a stored image (its record and its view; its layers stay until "vmpod image prune").
Refused while a sandbox has a container of it; with --force only the containers of sandboxes
that no longer run are disregarded (a running container's layers are never removed).`,
  spec: { options: [...COMMON_OPTIONS, { long: 'force', short: 'f', type: 'boolean' }] },
  async run(parsed) {
    const record = await Image.remove(oneImage(parsed.positionals), { force: parsed.options['force'] === true });
    if (parsed.options['json']) printJson({ removed: record.id });
    else process.stdout.write(`${record.id}\n`);
    return 0;
  },
};

export const imagePrune: Command = {
  words: ['image', 'prune'],
  summary: 'remove every image no sandbox uses, and unneeded layers',
  usage: `Usage: vmpod image prune [--json]

Removes every stored image no sandbox has a container of, the layers no remaining image has,
the views no longer needed and what interrupted unpacks left.`,
  spec: { options: [...COMMON_OPTIONS] },
  async run(parsed) {
    if (parsed.positionals.length > 0) throw new UsageError('image prune takes no arguments');
    const removed = await Image.prune();
    if (parsed.options['json']) printJson(removed);
    else process.stdout.write(`removed ${removed.images.length} image(s), ${removed.layers.length} layer(s), ${removed.leftovers.length} leftover(s)\n`);
    return 0;
  },
};
