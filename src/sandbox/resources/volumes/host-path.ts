/**
 * Checks of a volume's host path before anything is mounted or plugged.
 *
 * @internal
 * @module
 */
import fs from 'node:fs/promises';
import { constants } from 'node:fs';
import { InvalidArgumentError, NotFoundError } from '../../../errors.js';
import { VolumeReadOnlyError } from '../../../volume/errors.js';

/**
 * Stats `source` and, for a read-write volume, checks it can be written: `access(W_OK)` fails
 * with EROFS on a read-only mount (and EACCES/EPERM on an immutable file) even for root.
 */
export async function checkHostPath(
  volume: string,
  source: string,
  want: 'directory' | 'file-or-block',
  readOnly: boolean,
): Promise<void> {
  const stat = await fs.stat(source).catch(() => undefined);
  if (!stat) throw new NotFoundError(`source of volume "${volume}"`, source);
  if (want === 'directory' && !stat.isDirectory()) throw new InvalidArgumentError('source', `${source} is not a directory`);
  if (want === 'file-or-block' && !stat.isFile() && !stat.isBlockDevice()) {
    throw new InvalidArgumentError('source', `${source} is neither a regular file nor a block device`);
  }
  if (readOnly) return;
  try {
    await fs.access(source, constants.W_OK);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') throw new VolumeReadOnlyError(volume, source, { cause });
    throw cause;
  }
}
