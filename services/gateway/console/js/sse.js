// Server-Sent Events over fetch(): EventSource cannot send an Authorization
// header, and the token must not go in a URL. The stream is read with a
// ReadableStream and parsed as the HTML standard's event-stream format;
// a dropped connection is reopened after a pause, with Last-Event-ID (the
// API resumes right after it) unless the caller asks to start over.

import { authHeaders, failure } from './api.js';

/**
 * Follow `path`. Callbacks: `onEvent({type, data, id})`, `onOpen()` each time
 * the stream (re)opens, `onError(err, willRetry)`. `resume: false` reopens
 * without Last-Event-ID (for streams that start with a tail, such as logs).
 * Answers `{close()}`.
 */
export function follow(path, { onEvent, onOpen = () => {}, onError = () => {}, resume = true, lastEventId = null } = {}) {
  const abort = new AbortController();
  let lastId = lastEventId;
  let delay = 1000;

  async function once() {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (resume && lastId !== null && lastId !== '') headers.set('Last-Event-ID', String(lastId));
    const resp = await fetch(path, { headers, signal: abort.signal, cache: 'no-store', credentials: 'omit' });
    if (!resp.ok) {
      const err = await failure(resp);
      // Refusals that a retry cannot fix end the stream.
      err.final = [400, 401, 403, 404].includes(resp.status);
      throw err;
    }
    delay = 1000;
    onOpen();
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let ev = { type: 'message', data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      // Lines end with CRLF, LF or CR; keep an unfinished last line (and a
      // lone CR that may be half of a CRLF) for the next chunk.
      const lines = buf.split(/\r\n|\n|\r(?!$)/);
      buf = lines.pop();
      for (const line of lines) {
        if (line === '') {
          if (ev.data.length) {
            if (ev.id !== null) lastId = ev.id;
            try {
              onEvent({ type: ev.type, data: ev.data.join('\n'), id: ev.id ?? lastId });
            } catch (err) {
              console.error('event handler failed', err);
            }
          }
          ev = { type: 'message', data: [], id: null };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (name === 'event') ev.type = val;
        else if (name === 'data') ev.data.push(val);
        else if (name === 'id' && !val.includes('\0')) ev.id = val;
      }
    }
  }

  (async () => {
    while (!abort.signal.aborted) {
      try {
        await once();
        if (abort.signal.aborted) return;
        onError(new Error('the stream ended'), true);
      } catch (err) {
        if (abort.signal.aborted) return;
        if (err.final) {
          onError(err, false);
          return;
        }
        onError(err, true);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();

  return {
    close() {
      abort.abort();
    },
  };
}
