/** `vmpod events`: the events of every sandbox, one line each, until interrupted. */
import { Sandbox } from '../../sandbox/sandbox.js';
import type { WatchEvent } from '../../sandbox/watch.js';
import * as validate from '../../validate.js';
import { printableField, printableJson } from '../../printable.js';
import type { ParsedArgs } from '../args.js';
import { COMMON_OPTIONS, type Command } from '../command.js';
import { UsageError } from '../io.js';

const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const TYPES = new Set(['sandbox', 'container', 'device', 'error']);
const UNITS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * `--since`'s value as milliseconds since the epoch: a date (`2026-12-07T10:00:00Z`), Unix
 * seconds (`1765101600`), or a duration back from `now` (`30s`, `10m`, `2h`, `1d`).
 */
export function sinceOption(value: string, now = Date.now()): number {
  const duration = /^([0-9]{1,9})([smhd])$/u.exec(value);
  if (duration) return now - Number(duration[1]) * UNITS[duration[2]!]!;
  if (/^[0-9]{1,12}$/u.test(value)) return Number(value) * 1000;
  // A date: at least a year, month and day (Date.parse takes far more than that).
  const ms = /^[0-9]{4}-[0-9]{2}-[0-9]{2}/u.test(value) ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) throw new UsageError(`--since ${JSON.stringify(value)}: give a date (2026-12-07T10:00:00Z), Unix seconds, or a duration (30s, 10m, 2h, 1d)`);
  return ms;
}

/** What `--filter` keeps: by key, any of its values (keys are ANDed, values of one key ORed, as docker's). */
export type EventFilter = { sandbox?: Set<string>; type?: Set<string> };

/** Parses the `--filter KEY=VALUE` options (`sandbox=ID`, `type=sandbox|container|device|error`). */
export function filterOption(values: readonly string[]): EventFilter {
  const filter: EventFilter = {};
  for (const value of values) {
    const eq = value.indexOf('=');
    const key = value.slice(0, eq);
    const wanted = value.slice(eq + 1);
    if (eq < 0 || (key !== 'sandbox' && key !== 'type')) throw new UsageError(`--filter ${JSON.stringify(value)}: give sandbox=ID or type=sandbox|container|device|error`);
    if (key === 'sandbox') validate.id(wanted, '--filter sandbox');
    if (key === 'type' && !TYPES.has(wanted)) throw new UsageError(`--filter type=${JSON.stringify(wanted)}: give sandbox, container, device or error`);
    (filter[key] ??= new Set()).add(wanted);
  }
  return filter;
}

/** True when `filter` keeps `event` (an error that names no sandbox passes a sandbox filter: it may be anyone's). */
export function keeps(filter: EventFilter, event: WatchEvent): boolean {
  if (filter.type && !filter.type.has(event.type)) return false;
  if (filter.sandbox && event.sandbox !== undefined && !filter.sandbox.has(event.sandbox)) return false;
  return true;
}

/** One event as a JSON line (an error as its code and message). */
export function eventJson(event: WatchEvent): string {
  if (event.type === 'error') {
    const error = event.error as Error & { code?: string };
    const { error: _error, ...rest } = event;
    return printableJson({ ...rest, error: { code: error.code ?? 'ERR_UNKNOWN', message: error.message } });
  }
  return printableJson(event);
}

/** One event as a line of text: `TIME TYPE ACTION SANDBOX[/CONTAINER] [DETAILS]`. */
export function eventText(event: WatchEvent): string {
  const fields: string[] = [event.time, event.type];
  switch (event.type) {
    case 'sandbox':
      fields.push(event.action, event.sandbox);
      if (event.stopReason) fields.push(`reason=${event.stopReason.reason}`, `detail=${event.stopReason.detail}`);
      break;
    case 'container':
      fields.push(event.action, `${event.sandbox}/${event.container}`);
      if (event.exitStatus) fields.push(`exitCode=${event.exitStatus.exitCode}`, `signal=${event.exitStatus.signal}`, `oomKilled=${event.exitStatus.oomKilled}`);
      break;
    case 'device':
      fields.push(event.action, event.sandbox, `${event.device.kind}=${event.device.id}`);
      if (event.device.hotplugged !== undefined) fields.push(`hotplugged=${event.device.hotplugged}`);
      break;
    case 'error':
      fields.push(event.sandbox ?? '-', event.error.message);
      break;
  }
  return fields.map(printableField).join(' ');
}

function formatOption(o: ParsedArgs['options']): 'json' | 'text' {
  const format = o['format'] ?? (o['json'] ? 'json' : 'text');
  if (format !== 'json' && format !== 'text') throw new UsageError('--format must be json or text');
  if (o['json'] && format !== 'json') throw new UsageError('--json and --format text cannot be combined');
  return format;
}

export const events: Command = {
  words: ['events'],
  summary: 'print the events of every sandbox until interrupted',
  usage: `Usage: vmpod events [--since TIME] [--format json|text] [--filter KEY=VALUE]... [--wait-exits]

Prints one line per event of the sandboxes in the state directory, whichever process drives
them: a sandbox's states (created, starting, running, paused, stopping, stopped, deleting,
deleted), its containers (created, started, exited with their status, deleted), its devices
(added, removed), and records that could not be read (error). Runs until interrupted
(SIGINT, SIGTERM or SIGHUP: exit 0). The events come from the sandboxes' records: a state a
sandbox passed through between two reads is not shown; see docs/events.md.

Options:
      --since TIME      first replay what the records show from TIME on: a date
                        (2026-12-07T10:00:00Z), Unix seconds, or a duration back
                        from now (30s, 10m, 2h, 1d)
      --format F        text (default: TIME TYPE ACTION SANDBOX[/CONTAINER] ...)
                        or json (one object per line; same as --json)
      --filter KEY=VALUE
                        sandbox=ID or type=sandbox|container|device|error;
                        repeatable (values of one key: any; keys: all)
      --wait-exits      wait for the running containers of running sandboxes, so
                        that their exits are recorded and shown when no other
                        process waits for them (takes one agent port of each)`,
  spec: {
    options: [
      ...COMMON_OPTIONS,
      { long: 'since', type: 'string' },
      { long: 'format', type: 'string' },
      { long: 'filter', type: 'string', multiple: true },
      { long: 'wait-exits', type: 'boolean' },
    ],
  },
  async run(parsed) {
    if (parsed.positionals.length > 0 || parsed.rest.length > 0) throw new UsageError('vmpod events takes no arguments');
    const o = parsed.options;
    const format = formatOption(o);
    const filter = filterOption((o['filter'] as string[] | undefined) ?? []);
    const since = typeof o['since'] === 'string' ? sinceOption(o['since']) : undefined;
    const stop = new AbortController();
    const onSignal = (): void => stop.abort();
    for (const s of STOP_SIGNALS) process.on(s, onSignal);
    // A reader that went away (`vmpod events | head -1`): stop, quietly.
    const onOutputError = (): void => stop.abort();
    process.stdout.on('error', onOutputError);
    try {
      const watcher = Sandbox.watch({ signal: stop.signal, ...(since === undefined ? {} : { since }), ...(o['wait-exits'] ? { waitExits: true } : {}) });
      for await (const event of watcher) {
        if (!keeps(filter, event)) continue;
        const line = `${format === 'json' ? eventJson(event) : eventText(event)}\n`;
        if (!process.stdout.write(line)) {
          await new Promise<void>((resolve) => {
            process.stdout.once('drain', resolve);
            stop.signal.addEventListener('abort', () => resolve(), { once: true });
          });
        }
      }
      return 0;
    } finally {
      for (const s of STOP_SIGNALS) process.off(s, onSignal);
      process.stdout.off('error', onOutputError);
    }
  },
};
