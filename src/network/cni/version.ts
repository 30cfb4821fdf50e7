/**
 * CNI specification versions: which ones vmpod speaks, and how to compare them.
 *
 * @module
 */

/** The newest CNI specification version vmpod implements. */
export const CURRENT_VERSION = '1.1.0';

/**
 * Every CNI specification version vmpod accepts in a configuration, oldest first. 0.3.x and
 * 0.4.0 share one result format; 1.0.0 and 1.1.0 share the other. CHECK needs 0.4.0 or later,
 * GC and STATUS need 1.1.0.
 */
export const SUPPORTED_VERSIONS: readonly string[] = Object.freeze(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);

const SEMVER = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$/u;

/** True for a plain `MAJOR.MINOR.PATCH` version string (the only form CNI uses). */
export function isVersion(value: unknown): value is string {
  return typeof value === 'string' && SEMVER.test(value);
}

/** Compares two `MAJOR.MINOR.PATCH` versions: negative, zero or positive like a sort comparator. */
export function compareVersions(a: string, b: string): number {
  const pa = SEMVER.exec(a);
  const pb = SEMVER.exec(b);
  if (!pa || !pb) throw new TypeError(`not a CNI version: ${JSON.stringify(pa ? b : a)}`);
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return d;
  }
  return 0;
}

/** True when `version` is at least `minimum`. */
export function atLeast(version: string, minimum: string): boolean {
  return compareVersions(version, minimum) >= 0;
}

/** True when vmpod can run a configuration of this version. */
export function isSupportedVersion(version: string): boolean {
  return SUPPORTED_VERSIONS.includes(version);
}
