import { describe, expect, it } from 'vitest';
import type { ContainerStats } from '../../src/agent/messages.js';
import { CGROUP2_METRICS_TYPE, cgroup2Metrics, metricsAny } from '../../src/shim/metrics.js';
import { decodeAny } from '../../src/shim/proto/index.js';

function stats(overrides: Partial<ContainerStats> = {}): ContainerStats {
  return {
    containerId: 'c1',
    timestamp: 1_700_000_000_000,
    cpu: { usageUsec: 123_456_789, userUsec: 100_000_000, systemUsec: 23_456_789 },
    memory: { currentBytes: 52_428_800, maxBytes: 268_435_456, peakBytes: 60_000_000, oomKills: 2 },
    pids: { current: 7, max: 4096 },
    ...overrides,
  };
}

// A protobuf wire reader of our own (varints and length-delimited fields only, which is all the
// cgroup v2 metrics use), so that the field numbers are checked against containerd's
// cgroups v2 metrics.proto independently of the .proto text the shim loads.
type Wire = Map<number, Array<number | Buffer>>;
function readWire(buf: Buffer): Wire {
  const out: Wire = new Map();
  let i = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 1;
    for (;;) {
      const byte = buf[i++];
      if (byte === undefined) throw new Error('truncated varint');
      result += (byte & 0x7f) * shift;
      if ((byte & 0x80) === 0) return result;
      shift *= 128;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8);
    const wireType = key % 8;
    let value: number | Buffer;
    if (wireType === 0) value = varint();
    else if (wireType === 2) {
      const len = varint();
      value = buf.subarray(i, i + len);
      i += len;
    } else throw new Error(`unexpected wire type ${wireType}`);
    out.set(field, [...(out.get(field) ?? []), value]);
  }
  return out;
}
const sub = (wire: Wire, field: number): Wire => {
  const v = wire.get(field)?.[0];
  if (!Buffer.isBuffer(v)) throw new Error(`field ${field} is not a message`);
  return readWire(v);
};
const num = (wire: Wire, field: number): number | undefined => wire.get(field)?.[0] as number | undefined;

describe('metricsAny (cgroup v2 metrics for containerd)', () => {
  it('uses the bare type URL containerd registers for cgroup v2 metrics', () => {
    expect(metricsAny(stats()).typeUrl).toBe('io.containerd.cgroups.v2.Metrics');
    expect(CGROUP2_METRICS_TYPE).toBe('io.containerd.cgroups.v2.Metrics');
  });

  it('puts each value at containerd\'s field number', () => {
    const wire = readWire(metricsAny(stats()).value);
    // Metrics: pids = 1, cpu = 2, memory = 4, memory_events = 8
    const pids = sub(wire, 1);
    expect(num(pids, 1)).toBe(7); // current
    expect(num(pids, 2)).toBe(4096); // limit
    const cpu = sub(wire, 2);
    expect(num(cpu, 1)).toBe(123_456_789); // usage_usec
    expect(num(cpu, 2)).toBe(100_000_000); // user_usec
    expect(num(cpu, 3)).toBe(23_456_789); // system_usec
    const memory = sub(wire, 4);
    expect(num(memory, 32)).toBe(52_428_800); // usage
    expect(num(memory, 33)).toBe(268_435_456); // usage_limit
    const events = sub(wire, 8);
    expect(num(events, 5)).toBe(2); // oom_kill
    expect([...wire.keys()].sort()).toEqual([1, 2, 4, 8]);
  });

  it('decodes back to the same values', () => {
    const decoded = decodeAny<{
      pids: { current: number; limit: number };
      cpu: { usageUsec: number; userUsec: number; systemUsec: number; nrPeriods: number };
      memory: { usage: number; usageLimit: number; inactiveFile: number };
      memoryEvents: { oomKill: number; oom: number };
    }>(metricsAny(stats()));
    expect(decoded.pids).toEqual({ current: 7, limit: 4096 });
    expect(decoded.cpu).toMatchObject({ usageUsec: 123_456_789, userUsec: 100_000_000, systemUsec: 23_456_789, nrPeriods: 0 });
    expect(decoded.memory).toMatchObject({ usage: 52_428_800, usageLimit: 268_435_456, inactiveFile: 0 });
    expect(decoded.memoryEvents).toMatchObject({ oomKill: 2, oom: 0 });
  });

  it('sends 0 for what the guest could not read (null), as containerd does for a missing file', () => {
    const nulls = stats({
      cpu: { usageUsec: null, userUsec: null, systemUsec: null },
      memory: { currentBytes: null, maxBytes: null, peakBytes: null, oomKills: null },
      pids: { current: null, max: null },
    });
    expect(cgroup2Metrics(nulls)).toEqual({
      pids: { current: 0, limit: 0 },
      cpu: { usageUsec: 0, userUsec: 0, systemUsec: 0 },
      memory: { usage: 0, usageLimit: 0 },
      memoryEvents: { oomKill: 0 },
    });
    // On the wire every value of the sub-messages is 0 (protobufjs writes explicit zeros, which
    // a proto3 reader takes as 0 like absent ones).
    const wire = readWire(metricsAny(nulls).value);
    for (const field of [1, 2, 4, 8]) {
      const values = [...sub(wire, field).values()].flat();
      expect(values.every((v) => v === 0)).toBe(true);
    }
    const decoded = decodeAny<{ cpu: { usageUsec: number }; memory: { usage: number } }>(metricsAny(nulls));
    expect(decoded.cpu.usageUsec).toBe(0);
    expect(decoded.memory.usage).toBe(0);
  });

  it('keeps counters above 2^32 exact (uint64 varints)', () => {
    const big = 5 * 2 ** 40 + 3; // well above 32 bits, below 2^53
    const wire = readWire(metricsAny(stats({ cpu: { usageUsec: big, userUsec: 1, systemUsec: 2 } })).value);
    expect(num(sub(wire, 2), 1)).toBe(big);
  });
});
