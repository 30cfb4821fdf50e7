import { describe, expect, it } from 'vitest';
import { jsonErrorOffset } from '../../src/network/cni/json-offset.js';
import { CniConfig } from '../../src/network/cni/config.js';

describe('JSON error offsets', () => {
  it('accepts valid JSON, as JSON.parse does', () => {
    for (const text of ['{}', '[]', ' {"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"]} ', '0', '"s"']) {
      expect(JSON.parse(text) !== undefined || true).toBe(true);
      expect(jsonErrorOffset(text), text).toBeUndefined();
    }
  });
  it('points at the first error, where V8 gives no position', () => {
    expect(jsonErrorOffset('{"a": 1,\n "b": }')).toBe(15);
    expect(jsonErrorOffset('[1,2,,]')).toBe(5);
    expect(jsonErrorOffset('{"a": tru}')).toBe(9);
    expect(jsonErrorOffset('{"a":\n')).toBe(6);
    expect(jsonErrorOffset('{"a": 1} x')).toBe(9);
    expect(jsonErrorOffset('{"a": 01}')).toBe(7);
    expect(jsonErrorOffset('"\\x"')).toBe(2);
  });
  it('gives config errors the real line and column', () => {
    expect(() => CniConfig.parse('{\n  "cniVersion": "1.0.0",\n  "name": }\n', '/etc/cni/net.d/10-x.conflist')).toThrow(
      /10-x.conflist.*line 3, column 11/s,
    );
  });
});
