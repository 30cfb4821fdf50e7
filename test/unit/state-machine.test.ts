import { describe, expect, it } from 'vitest';
import { assertTransition, isValidContainerTransition, isValidSandboxTransition } from '../../src/sandbox/state-machine.js';
import { InvalidStateError } from '../../src/errors.js';

describe('sandbox state machine', () => {
  it('allows the lifecycle create -> start -> pause -> resume -> stop -> start -> stop -> delete', () => {
    const path = ['created', 'starting', 'running', 'paused', 'running', 'stopping', 'stopped', 'starting', 'running', 'stopping', 'stopped', 'deleting', 'deleted'] as const;
    for (let i = 1; i < path.length; i++) expect(isValidSandboxTransition(path[i - 1]!, path[i]!)).toBe(true);
  });
  it('goes through a transitional state for every operation that talks to the guest', () => {
    expect(isValidSandboxTransition('created', 'running')).toBe(false);
    expect(isValidSandboxTransition('running', 'stopped')).toBe(false);
    expect(isValidSandboxTransition('stopped', 'deleted')).toBe(false);
    // A start that fails, or is stopped by another process, ends stopped.
    expect(isValidSandboxTransition('starting', 'stopped')).toBe(true);
    expect(isValidSandboxTransition('starting', 'stopping')).toBe(true);
    expect(isValidSandboxTransition('created', 'deleting')).toBe(true);
    expect(isValidSandboxTransition('deleting', 'running')).toBe(false);
  });
  it('rejects illegal transitions with both states named', () => {
    expect(isValidSandboxTransition('running', 'deleted')).toBe(false);
    expect(isValidSandboxTransition('created', 'paused')).toBe(false);
    expect(isValidSandboxTransition('deleted', 'running')).toBe(false);
    let error: unknown;
    try { assertTransition('sandbox', 'sandbox "a"', 'running', 'deleted'); } catch (e) { error = e; }
    expect(error).toBeInstanceOf(InvalidStateError);
    expect((error as InvalidStateError).code).toBe('ERR_VMPOD_INVALID_STATE');
    expect((error as InvalidStateError).from).toBe('running');
    expect((error as InvalidStateError).to).toBe('deleted');
    expect((error as Error).message).toBe('sandbox "a": cannot go from "running" to "deleted"');
  });
  it('checks containers', () => {
    expect(isValidContainerTransition('created', 'running')).toBe(true);
    expect(isValidContainerTransition('stopped', 'running')).toBe(false);
    expect(() => assertTransition('container', 'c', 'deleted', 'running')).toThrow(InvalidStateError);
  });
});
