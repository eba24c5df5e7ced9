// Building the page: elements from data, never from HTML strings, so nothing
// the API returns can become markup or script.

/**
 * An element: `h('a', {href: '#/vms', class: 'x'}, 'text', child)`.
 * Attributes named `on…` with a function become listeners; `false`, `null`
 * and `undefined` attributes are left out; children are nodes or text.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

/** Append children (nodes, text, arrays of either; null is skipped). */
export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace an element's content. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A date as the reader's locale shows it, or a dash. */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** MiB as MiB or GiB. */
export function mib(n) {
  if (n === null || n === undefined) return '—';
  return n >= 1024 && n % 1024 === 0 ? `${n / 1024} GiB` : `${n} MiB`;
}

/** A status badge: the word itself, coloured by class (never by colour alone). */
export function badge(status) {
  return h('span', { class: `badge status-${String(status).replace(/[^a-z_]/g, '')}` }, status ?? '—');
}

/** A description list from [term, value] pairs. */
export function details(pairs) {
  return h('dl', { class: 'details' }, pairs.filter(Boolean).map(([t, v]) => [h('dt', {}, t), h('dd', {}, v ?? '—')]));
}

/** A labelled form field: label, control, and an optional hint tied to it. */
export function field(label, control, hint) {
  const id = control.id || (control.id = `f-${Math.random().toString(36).slice(2, 9)}`);
  const parts = [h('label', { for: id }, label), control];
  if (hint) {
    const hid = `${id}-hint`;
    control.setAttribute('aria-describedby', hid);
    parts.push(h('p', { class: 'hint', id: hid }, hint));
  }
  return h('div', { class: 'field' }, parts);
}

let noticeTimer;
/** Say something in the live region (read out by screen readers). */
export function notice(text, kind = 'info') {
  const el = document.getElementById('notice');
  if (!el) return;
  el.className = `notice ${kind}`;
  el.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    el.textContent = '';
    el.className = 'notice';
  }, kind === 'error' ? 12000 : 5000);
}

/** An error shown in place: the API's code and message. */
export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, describe(err));
}

/** The API's `code: message`, or the error's own text. */
export function describe(err) {
  return err && err.code ? `${err.code}: ${err.message}` : String(err?.message ?? err);
}

/**
 * Ask before something that cannot be undone: a modal <dialog> (focus is
 * kept inside it, Escape cancels), with Cancel focused first. Answers true
 * when confirmed.
 */
export function confirmDialog({ title, text, confirm = 'Confirm' }) {
  return new Promise((resolve) => {
    const cancelBtn = h('button', { type: 'button', class: 'secondary', value: 'cancel' }, 'Cancel');
    const okBtn = h('button', { type: 'button', class: 'danger', value: 'ok' }, confirm);
    const dlg = h(
      'dialog',
      { class: 'confirm', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-text' },
      h('h2', { id: 'confirm-title' }, title),
      h('p', { id: 'confirm-text' }, text),
      h('div', { class: 'actions' }, cancelBtn, okBtn),
    );
    const opener = document.activeElement;
    let answer = false;
    cancelBtn.addEventListener('click', () => dlg.close());
    okBtn.addEventListener('click', () => {
      answer = true;
      dlg.close();
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    });
    document.body.append(dlg);
    dlg.showModal();
    cancelBtn.focus();
  });
}

/** A table with a (visually hidden) caption, headings, and a body to fill. */
export function table(caption, headings, attrs = {}) {
  const tbody = h('tbody');
  const el = h(
    'table',
    { class: 'list', ...attrs },
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))),
    tbody,
  );
  return { el, tbody };
}

/** A table cell labelled with its column (shown as a label on narrow screens). */
export function td(label, ...children) {
  return h('td', { 'data-label': label }, h('div', { class: 'cell' }, children));
}
