// A browser terminal (xterm.js) on the VM's serial console WebSocket,
// `/v1/vms/{id}/terminal`. A browser cannot set Authorization on a
// WebSocket, so the token goes as an offered subprotocol beside
// `vmplane.terminal.v2` (the one the gateway selects): a header, never the
// URL. In that subprotocol keystrokes are binary frames and text frames are
// control messages: the terminal's size, sent on open and on every resize.

import { Terminal } from '../vendor/xterm/xterm.mjs';
import { FitAddon } from '../vendor/xterm/addon-fit.mjs';
import { session } from './api.js';

/** base64url without padding, of UTF-8 text. */
function b64url(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The subprotocols carrying this tab's credentials. */
export function subprotocols() {
  const s = session();
  const p = ['vmplane.terminal.v2', `vmplane.bearer.${b64url(s.token)}`];
  if (s.org) p.push(`vmplane.org.${s.org}`);
  if (s.project) p.push(`vmplane.project.${s.project}`);
  return p;
}

/**
 * Open a terminal for VM `id` in `container`. `onState(text, open)` reports
 * the connection; `onEscape()` is called on Ctrl+] (the terminal takes every
 * other key, Tab included, so this is the keyboard's way out).
 * Answers `{close(), focus()}`.
 */
export function openTerminal(container, id, { onState = () => {}, onEscape = () => {} } = {}) {
  const term = new Terminal({
    convertEol: false,
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  term.textarea?.setAttribute('aria-label', 'Serial console terminal');
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === 'keydown' && e.ctrlKey && (e.key === ']' || e.code === 'BracketRight')) {
      onEscape();
      return false;
    }
    return true;
  });
  const refit = () => {
    try {
      fit.fit();
    } catch {
      // not laid out yet
    }
  };
  refit();
  const resize = new ResizeObserver(refit);
  resize.observe(container);

  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}/v1/vms/${encodeURIComponent(id)}/terminal`, subprotocols());
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  onState('Connecting…', false);
  const sendSize = () => {
    if (ws.readyState === WebSocket.OPEN && term.cols > 0 && term.rows > 0) {
      ws.send(JSON.stringify({ type: 'resize', cols: Math.min(term.cols, 1000), rows: Math.min(term.rows, 1000) }));
    }
  };
  const resized = term.onResize(sendSize);
  ws.addEventListener('open', () => {
    onState('Connected', true);
    sendSize();
    term.focus();
  });
  ws.addEventListener('message', (m) => {
    term.write(typeof m.data === 'string' ? m.data : new Uint8Array(m.data));
  });
  ws.addEventListener('close', (e) => {
    onState(e.code === 1000 || e.code === 1005 ? 'Disconnected' : `Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ''})`, false);
  });
  // The browser does not say why a WebSocket was refused: the usual reasons.
  ws.addEventListener('error', () =>
    onState('The terminal could not connect: the VM must be running, and its console takes one session at a time (is it open elsewhere?).', false),
  );
  const typed = term.onData((d) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
  });
  const typedBin = term.onBinary((d) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff));
  });

  return {
    close() {
      resize.disconnect();
      typed.dispose();
      typedBin.dispose();
      resized.dispose();
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
      term.dispose();
    },
    focus() {
      term.focus();
    },
  };
}
