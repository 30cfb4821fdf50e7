import { describe, expect, it } from 'vitest';
import { assertTransition, isValidContainerTransition, isValidSandboxTransition, stateError } from '../../src/sandbox/state-machine.js';
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
    expect((error as Error).message).toBe('cannot delete sandbox "a": it is running; stop it first, or delete with force');
  });
  it('words state errors as the operation, the object, its state and what to do', () => {
    const message = (fn: () => void): string => {
      try {
        fn();
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidStateError);
        return (e as Error).message;
      }
      throw new Error('no error');
    };
    expect(message(() => assertTransition('sandbox', 'sandbox "web"', 'running', 'deleting'))).toBe('cannot delete sandbox "web": it is running; stop it first, or delete with force');
    expect(message(() => assertTransition('sandbox', 'sandbox "web"', 'created', 'paused'))).toBe('cannot pause sandbox "web": it has not been started; start it first');
    expect(message(() => assertTransition('sandbox', 'sandbox "web"', 'stopped', 'paused'))).toBe('cannot pause sandbox "web": it is stopped; start it first');
    expect(message(() => assertTransition('sandbox', 'sandbox "web"', 'running', 'starting', 'it runs already'))).toBe('cannot start sandbox "web": it is running; it runs already');
    expect(message(() => assertTransition('container', 'container "c"', 'stopped', 'running'))).toBe('cannot start container "c": it has exited');
    expect(message(() => assertTransition('container', 'container "c"', 'running', 'deleted'))).toBe('cannot delete container "c": it is running; kill it first, or delete with force');
    // A call that needs a state rather than going to one.
    const needs = stateError('container', 'container "c" in sandbox "web"', 'stopped', 'running', { action: 'exec' });
    expect(needs).toMatchObject({ code: 'ERR_VMPOD_INVALID_STATE', from: 'stopped', to: 'running', message: 'container "c" in sandbox "web" has exited: exec needs it running' });
    expect(stateError('sandbox', 'sandbox "web"', 'stopped', 'running', { action: 'creating a container' }).message).toBe(
      'sandbox "web" is stopped: creating a container needs it running; start it first',
    );
    expect(stateError('sandbox', 'sandbox "web"', 'paused', 'running', { action: 'exec' }).message).toBe('sandbox "web" is paused: exec needs it running; resume it first');
  });
  it('checks containers', () => {
    expect(isValidContainerTransition('created', 'running')).toBe(true);
    expect(isValidContainerTransition('stopped', 'running')).toBe(false);
    expect(() => assertTransition('container', 'c', 'deleted', 'running')).toThrow(InvalidStateError);
  });
});
