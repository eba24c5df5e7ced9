// One VM: its details, actions, live console log, event history and a
// browser terminal. The VM's own event feed (history, then live) fills the
// history and refreshes the details whenever something happens to it.

import { ApiError, api, seg } from '../api.js';
import { follow } from '../sse.js';
import { badge, confirmDialog, describe, details, errorBox, h, mib, notice, replace, table, td, when } from '../dom.js';
import { openTerminal } from '../terminal.js';

/** Which statuses each action applies to (as the VM state machine decides). */
const ACTIONS = [
  ['start', 'Start', ['stopped', 'failed']],
  ['stop', 'Stop', ['running', 'failed']],
  ['restart', 'Restart', ['running']],
  ['standby', 'Standby', ['running']],
  ['restore', 'Restore', ['standby']],
];
const MAX_LOG_LINES = 2000;

export function vmPage(main, { id }) {
  document.title = `${id} · vmplane`;
  const abort = new AbortController();
  const path = `/v1/vms/${seg(id)}`;
  let vm = null;
  let events = null;
  let logs = null;
  let term = null;
  let refreshTimer = null;

  const title = h('h1', { id: 'vm-title' }, id);
  const status = h('p', { class: 'vm-status', id: 'vm-status', role: 'status' });
  const err = h('div', { id: 'vm-error' });
  const buttons = ACTIONS.map(([action, label]) => {
    const b = h('button', { type: 'button', class: 'secondary', id: `action-${action}`, dataset: { action } }, label);
    b.addEventListener('click', () => act(action, label));
    return b;
  });
  const del = h('button', { type: 'button', class: 'danger', id: 'action-delete' }, 'Delete…');
  del.addEventListener('click', remove);
  const toolbar = h('div', { class: 'toolbar actions', role: 'group', 'aria-label': 'Actions' }, buttons, del);
  const info = h('div', { id: 'vm-details' });

  const logPre = h('pre', { class: 'log', id: 'vm-log', tabindex: 0, role: 'log', 'aria-label': 'Console log', 'aria-live': 'off' });
  const logState = h('p', { class: 'muted', id: 'log-state' });

  const termBox = h('div', { class: 'terminal', id: 'terminal', hidden: true });
  const termState = h('p', { class: 'muted', id: 'terminal-state', role: 'status' }, 'Closed');
  const termOpen = h('button', { type: 'button', id: 'terminal-open' }, 'Open terminal');
  const termClose = h('button', { type: 'button', class: 'secondary', id: 'terminal-close', hidden: true }, 'Close terminal');
  termOpen.addEventListener('click', openTerm);
  termClose.addEventListener('click', closeTerm);

  const { el: evTable, tbody: evBody } = table('Event history', ['#', 'Time', 'Type', 'Operation'], { id: 'vm-events' });

  replace(
    main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/vms' }, '← Virtual machines')),
    h('div', { class: 'heading' }, title, status),
    err,
    h('section', { 'aria-labelledby': 'actions-title' }, h('h2', { id: 'actions-title', class: 'sr-only' }, 'Actions'), toolbar),
    h('section', { 'aria-labelledby': 'details-title', class: 'card' }, h('h2', { id: 'details-title' }, 'Details'), info),
    h(
      'section',
      { 'aria-labelledby': 'terminal-title', class: 'card' },
      h('h2', { id: 'terminal-title' }, 'Terminal'),
      h('p', { class: 'hint' }, 'The serial console, both ways. While the terminal has focus it takes every key; press Ctrl+] to leave it.'),
      h('div', { class: 'toolbar' }, termOpen, termClose, termState),
      termBox,
    ),
    h('section', { 'aria-labelledby': 'log-title', class: 'card' }, h('h2', { id: 'log-title' }, 'Console log'), logState, logPre),
    h('section', { 'aria-labelledby': 'events-title', class: 'card' }, h('h2', { id: 'events-title' }, 'Event history'), evTable),
  );

  function show(v) {
    vm = v;
    document.title = `${v.name} · vmplane`;
    title.textContent = v.name;
    replace(status, badge(v.status), v.message ? h('span', { class: 'message' }, ` ${v.message}`) : null);
    for (const b of buttons) {
      const [, , allowed] = ACTIONS.find(([a]) => a === b.dataset.action);
      b.disabled = !allowed.includes(v.status);
    }
    del.disabled = v.status === 'deleting' || v.status === 'deleted';
    termOpen.disabled = v.status !== 'running' || term !== null;
    const forwards = (v.port_forwards ?? []).map((f) => `${f.host_port ?? '?'} → ${f.guest_port}/${f.protocol}`).join(', ');
    replace(
      info,
      details([
        ['Id', v.id],
        ['Status', v.status],
        ['Image', v.image],
        ['vCPUs', v.vcpus],
        ['Memory', mib(v.memory_mib)],
        ['Disk', `${v.disk_gb} GB`],
        ['Host', `${v.host_id} (${v.host_status})`],
        ['IP', v.ip],
        ['SSH port', v.ssh_port],
        ['Port forwards', forwards || null],
        ['Volumes', (v.volumes ?? []).map((m) => `${m.volume_id}${m.mount_path ? ` at ${m.mount_path}` : ''}${m.readonly ? ' (read-only)' : ''}`).join(', ') || null],
        ['Plan', v.plan],
        ['Org / project', `${v.org_id} / ${v.project_id}`],
        ['Created', when(v.created_at)],
        ['Started', when(v.started_at)],
        ['Updated', when(v.updated_at)],
      ]),
    );
    if (v.status === 'running' && !logs) startLogs();
  }

  async function load() {
    try {
      show(await api('GET', path, undefined, { signal: abort.signal }));
      replace(err);
    } catch (e) {
      if (abort.signal.aborted) return;
      if (e instanceof ApiError && e.status === 404) {
        replace(err, h('p', { class: 'error', role: 'alert' }, `This VM does not exist (or was deleted).`));
        for (const b of [...buttons, del, termOpen]) b.disabled = true;
      } else replace(err, errorBox(e));
    }
  }

  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(load, 150);
  }

  async function act(action, label) {
    try {
      await api('POST', `${path}/${action}`, undefined, { signal: abort.signal });
      notice(`${label}: accepted.`);
      refreshSoon();
    } catch (e) {
      if (!abort.signal.aborted) notice(`${label} refused: ${describe(e)}`, 'error');
    }
  }

  async function remove() {
    const name = vm?.name ?? id;
    const ok = await confirmDialog({ title: `Delete ${name}?`, text: `The VM ${name} (${id}) and its root disk (unless it is kept) are deleted. This cannot be undone.`, confirm: 'Delete' });
    if (!ok) return;
    try {
      await api('DELETE', path, undefined, { signal: abort.signal });
      notice(`Deleting ${name}.`);
      refreshSoon();
    } catch (e) {
      if (!abort.signal.aborted) notice(`Delete refused: ${describe(e)}`, 'error');
    }
  }

  function eventRow(e) {
    return h(
      'tr',
      { dataset: { type: e.type } },
      td('#', e.seq),
      td('Time', when(e.time)),
      td('Type', h('code', {}, e.type)),
      td('Operation', e.operation_id ?? '—'),
    );
  }

  function startEvents() {
    events = follow(`${path}/events?follow=true`, {
      onEvent(ev) {
        let e;
        try {
          e = JSON.parse(ev.data);
        } catch {
          return;
        }
        evBody.prepend(eventRow(e));
        refreshSoon();
      },
      onError(e, retrying) {
        if (!retrying) notice(`Event history: ${describe(e)}`, 'error');
      },
    });
  }

  function startLogs() {
    let lines = 0;
    logs = follow(`${path}/logs?follow=true&tail=200`, {
      resume: false,
      onOpen() {
        logPre.textContent = '';
        lines = 0;
        logState.textContent = 'Following the console output.';
      },
      onEvent(ev) {
        const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
        logPre.append(`${ev.data}\n`);
        lines += 1;
        if (lines > MAX_LOG_LINES) {
          logPre.firstChild?.remove();
          lines -= 1;
        }
        if (atEnd) logPre.scrollTop = logPre.scrollHeight;
      },
      onError(e, retrying) {
        logState.textContent = retrying ? 'Console log interrupted; reconnecting…' : `No console log: ${describe(e)}`;
        if (!retrying) logs = null;
      },
    });
  }

  function openTerm() {
    if (term) return;
    termBox.hidden = false;
    termOpen.disabled = true;
    termClose.hidden = false;
    term = openTerminal(termBox, id, {
      onState(text) {
        termState.textContent = text;
      },
      onEscape() {
        termClose.focus();
      },
    });
  }

  function closeTerm() {
    term?.close();
    term = null;
    termBox.hidden = true;
    termClose.hidden = true;
    termState.textContent = 'Closed';
    termOpen.disabled = vm?.status !== 'running';
    termOpen.focus();
  }

  logState.textContent = 'The console log follows once the VM runs.';
  load().then(() => {
    if (!abort.signal.aborted) startEvents();
  });

  return () => {
    abort.abort();
    clearTimeout(refreshTimer);
    events?.close();
    logs?.close();
    term?.close();
  };
}
