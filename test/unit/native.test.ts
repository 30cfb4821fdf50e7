import { describe, expect, it } from 'vitest';
import { native } from '../../src/native.js';

describe('native addon', () => {
  it('loads and matches the ABI this package declares', () => {
    expect(native().abiVersion).toBe(1);
  });
});
