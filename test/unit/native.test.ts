import { describe, expect, it } from 'vitest';
import { ABI_VERSION, native } from '../../src/native.js';

describe('native addon', () => {
  it('loads and matches the ABI this package declares', () => {
    expect(native().abiVersion).toBe(ABI_VERSION);
  });
});
