// The VM list, kept current by the event feed: each VM event refreshes its
// row (a status change shows without reload), a `created` event brings the
// new VM in.

import { ApiError, api, listAll, seg } from '../api.js';
import { follow } from '../sse.js';
import { badge, errorBox, field, h, mib, replace, table, td, when } from '../dom.js';

const STATUSES = ['pending', 'provisioning', 'starting', 'running', 'stopping', 'stopped', 'restarting', 'standby', 'restoring', 'deleting', 'failed'];

export function vmList(main) {
  document.title = 'Virtual machines · vmplane';
  const abort = new AbortController();
  let stream = null;
  let status = '';
  const rows = new Map();
  const timers = new Map();
  let org = null;

  const live = h('p', { class: 'live', id: 'live-state', role: 'status' }, 'Connecting to live updates…');
  const filter = h('select', { id: 'status-filter', name: 'status' }, h('option', { value: '' }, 'Any (not deleted)'), STATUSES.map((s) => h('option', { value: s }, s)));
  const { el: tableEl, tbody } = table('Virtual machines', ['Name', 'Status', 'Image', 'vCPUs', 'Memory', 'SSH port', 'Created'], { id: 'vm-table' });
  const empty = h('p', { class: 'muted', id: 'vm-empty', hidden: true }, 'No virtual machines yet.');
  const count = h('p', { class: 'muted', id: 'vm-count' });
  const err = h('div');

  replace(
    main,
    h('div', { class: 'heading' }, h('h1', {}, 'Virtual machines'), h('a', { class: 'button', href: '#/vms/new', id: 'create-vm' }, 'Create VM')),
    h('div', { class: 'toolbar' }, field('Status', filter), live),
    err,
    tableEl,
    empty,
    count,
  );

  function row(vm) {
    return h(
      'tr',
      { dataset: { vmId: vm.id, status: vm.status } },
      td('Name', h('a', { href: `#/vms/${seg(vm.id)}` }, vm.name), h('span', { class: 'id' }, vm.id)),
      td('Status', badge(vm.status)),
      td('Image', vm.image),
      td('vCPUs', vm.vcpus),
      td('Memory', mib(vm.memory_mib)),
      td('SSH port', vm.ssh_port ?? '—'),
      td('Created', when(vm.created_at)),
    );
  }

  function shown(vm) {
    return vm.status !== 'deleted' && (!status || vm.status === status);
  }

  function upsert(vm) {
    const old = rows.get(vm.id);
    if (!shown(vm)) {
      if (old) old.remove();
      rows.delete(vm.id);
    } else {
      const tr = row(vm);
      if (old) old.replaceWith(tr);
      else tbody.append(tr);
      rows.set(vm.id, tr);
    }
    footer();
  }

  function footer() {
    empty.hidden = rows.size > 0;
    tableEl.hidden = rows.size === 0;
    count.textContent = rows.size ? `${rows.size} shown` : '';
  }

  async function load() {
    const vms = await listAll(`/v1/vms${status ? `?status=${encodeURIComponent(status)}` : ''}`, { signal: abort.signal });
    tbody.replaceChildren();
    rows.clear();
    for (const vm of vms) upsert(vm);
    org ??= vms[0]?.org_id ?? null;
    footer();
    return vms;
  }

  // One VM's row again, a moment after its last event (events come in bursts).
  function later(key, fn, ms = 150) {
    clearTimeout(timers.get(key));
    timers.set(
      key,
      setTimeout(() => {
        timers.delete(key);
        fn().catch((e) => {
          if (!abort.signal.aborted) replace(err, errorBox(e));
        });
      }, ms),
    );
  }

  async function refresh(id) {
    try {
      upsert(await api('GET', `/v1/vms/${seg(id)}`, undefined, { signal: abort.signal }));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        rows.get(id)?.remove();
        rows.delete(id);
        footer();
      } else throw e;
    }
  }

  function onEvent(ev) {
    let e;
    try {
      e = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (e.event?.aggregate_type !== 'vm' || (org && e.org_id !== org)) return;
    const id = e.aggregate_id;
    if (rows.has(id)) later(id, () => refresh(id));
    else if (e.type === 'created') later('list', load, 300);
    else if (status) later(id, () => refresh(id));
  }

  // Where the feed starts: the newest history entry of the most recently
  // changed VM. Everything after it arrives on the feed; the list is read
  // again once the feed is open, so nothing in between is missed.
  async function start(vms) {
    let after = 0;
    const newest = vms.reduce((a, b) => (a && a.updated_at > b.updated_at ? a : b), null);
    if (newest) {
      const history = await api('GET', `/v1/vms/${seg(newest.id)}/events`, undefined, { signal: abort.signal });
      after = history.reduce((m, ev) => Math.max(m, ev.seq), 0);
    }
    stream = follow('/v1/events?type=vm.*', {
      lastEventId: after,
      onEvent,
      onOpen() {
        live.textContent = 'Live: changes appear as they happen.';
        live.dataset.state = 'open';
      },
      onError(e, retrying) {
        live.dataset.state = 'error';
        live.textContent = retrying ? 'Live updates interrupted; reconnecting…' : `Live updates stopped: ${e.code ?? ''} ${e.message}`;
      },
    });
    await load();
  }

  filter.addEventListener('change', () => {
    status = filter.value;
    load().catch((e) => replace(err, errorBox(e)));
  });

  load()
    .then(start)
    .catch((e) => {
      if (!abort.signal.aborted) replace(err, errorBox(e));
    });

  return () => {
    abort.abort();
    stream?.close();
    for (const t of timers.values()) clearTimeout(t);
  };
}
