/**
 * Untrusted text made safe to write to a terminal.
 *
 * Text that comes from a guest (its console log, the container ids its agent reports, error
 * messages that quote them) is hostile: a terminal acts on the control characters in what it
 * prints. ESC and the C1 controls (U+0080–U+009F; U+009B is CSI, U+009D OSC, U+0090 DCS in
 * many terminals) start sequences that clear the screen, move the cursor to rewrite earlier
 * lines, set the window title, write the clipboard (OSC 52) or make hyperlinks; BEL, backspace
 * and a lone CR ring, overwrite or hide what was printed; Unicode bidi controls reorder text so
 * that it reads differently from what it is.
 *
 * {@link printable} replaces each such character with a visible escape: `\x1b` for a C0 control
 * or DEL, `\r` for CR (a CR LF pair becomes a plain newline: console logs end their lines so),
 * `\u009b` for a C1 control, `\u202e` for a bidi control, `\ud800` for a lone surrogate. Nothing is
 * dropped, so the reader sees that something odd was there. Printable text, including any
 * non-ASCII letters and emoji, newlines and tabs stay as they are; U+FFFD (what invalid UTF-8
 * decodes to) too. The escapes are for reading, not a reversible encoding: a backslash in the
 * text is not escaped, so the text `\x1b` and the character ESC print the same.
 * {@link printableField} is the variant for a one-line field such as a table cell: it escapes
 * newlines and tabs as well.
 *
 * This module imports nothing from the rest of vmpod, so that any part of it can use it.
 *
 * @module
 */
import { StringDecoder } from 'node:string_decoder';

/** Options of {@link printable}. */
export interface PrintableOptions {
  /** Escape newlines and tabs too, for text that must stay on one line (default false). */
  singleLine?: boolean;
}

// Characters a terminal acts on, or that make text read as something else: C0 controls
// (except TAB and LF, handled below), DEL, C1 controls, the bidi controls (ALM, LRM, RLM,
// LRE..RLO, LRI..PDI) and lone surrogates (which an encoder would silently turn into U+FFFD).
const UNSAFE = '\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069\\p{Cs}';
const MULTI_LINE = new RegExp(`\\r\\n|[${UNSAFE}]`, 'gu');
const SINGLE_LINE = new RegExp(`[\\t\\n${UNSAFE}]`, 'gu');
// In JSON text these can only be inside strings, where `\uXXXX` means the same character.
const JSON_UNSAFE = /[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;

const NAMED: Readonly<Record<string, string>> = { '\t': '\\t', '\n': '\\n', '\r': '\\r' };

function hex(code: number, digits: number): string {
  return code.toString(16).padStart(digits, '0');
}

/** The visible escape of one character. */
function escape(char: string): string {
  const named = NAMED[char];
  if (named !== undefined) return named;
  const code = char.codePointAt(0)!;
  return code < 0x80 ? `\\x${hex(code, 2)}` : `\\u${hex(code, 4)}`;
}

/**
 * `text` with every terminal control character, bidi control and lone surrogate replaced by a
 * visible escape (see the module's description). Keeps newlines and tabs unless
 * `options.singleLine`; turns CR LF into LF.
 */
export function printable(text: string, options: PrintableOptions = {}): string {
  if (options.singleLine) return text.replace(SINGLE_LINE, escape);
  return text.replace(MULTI_LINE, (match) => (match === '\r\n' ? '\n' : escape(match)));
}

/** {@link printable} for a one-line field (an id in a table, a status): newlines and tabs are escaped too. */
export function printableField(text: string): string {
  return printable(text, { singleLine: true });
}

/**
 * `JSON.stringify(value, null, space)` safe for a terminal, meaning the same to a JSON parser:
 * JSON.stringify escapes C0 controls and lone surrogates but leaves DEL, C1 and bidi controls
 * as they are; these become `\uXXXX` escapes.
 */
export function printableJson(value: unknown, space?: number): string {
  const json = JSON.stringify(value, null, space) ?? 'null';
  return json.replace(JSON_UNSAFE, (char) => `\\u${hex(char.codePointAt(0)!, 4)}`);
}

/**
 * {@link printable} over a byte stream, chunk by chunk: UTF-8 sequences and CR LF pairs split
 * across two chunks are put back together (a CR at the end of a chunk waits for the next one).
 */
export class PrintableDecoder {
  readonly #decoder = new StringDecoder('utf8');
  #carriageReturn = false;

  /** The printable text of `chunk` (what can be decided of it so far). */
  write(chunk: Buffer): string {
    return this.#text(this.#decoder.write(chunk), false);
  }

  /** The rest: a held-back CR, an incomplete UTF-8 sequence (as U+FFFD). */
  end(): string {
    return this.#text(this.#decoder.end(), true);
  }

  #text(decoded: string, last: boolean): string {
    let text = this.#carriageReturn ? `\r${decoded}` : decoded;
    this.#carriageReturn = !last && text.endsWith('\r');
    if (this.#carriageReturn) text = text.slice(0, -1);
    return printable(text);
  }
}
