/**
 * Signals as `runc kill` takes them: a name with or without `SIG` (any case), or a number.
 *
 * @module
 */
import os from 'node:os';
import { RuntimeError } from './log.js';

const BY_NUMBER = new Map<number, NodeJS.Signals>();
for (const [name, number] of Object.entries(os.constants.signals)) {
  if (!BY_NUMBER.has(number)) BY_NUMBER.set(number, name as NodeJS.Signals);
}

/** `KILL`, `SIGKILL`, `sigkill` and `9` are SIGKILL; RuntimeError `unknown signal "X"` otherwise. */
export function parseSignal(text: string): { name: NodeJS.Signals; number: number } {
  if (/^[0-9]{1,3}$/u.test(text)) {
    const number = Number(text);
    const name = BY_NUMBER.get(number);
    if (name !== undefined) return { name, number };
    // Real-time signals have no Node name; the agent takes them by number.
    if (number >= 32 && number <= 64) return { name: `SIGRT${number}` as NodeJS.Signals, number };
    throw new RuntimeError(`unknown signal "${text}"`);
  }
  const upper = text.toUpperCase();
  const name = (upper.startsWith('SIG') ? upper : `SIG${upper}`) as NodeJS.Signals;
  const number = (os.constants.signals as Record<string, number>)[name];
  if (number === undefined) throw new RuntimeError(`unknown signal "${text}"`);
  return { name, number };
}

/** The name of signal number `n` (`SIG...`), or `SIG<n>` for one Node does not name. */
export function signalName(n: number): string {
  return BY_NUMBER.get(n) ?? `SIG${n}`;
}
