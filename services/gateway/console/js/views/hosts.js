// Hosts: what each worker offers and uses, its status and heartbeat; the
// admin may cordon (no new VMs placed there) and uncordon.

import { api, seg } from '../api.js';
import { badge, describe, errorBox, h, mib, notice, replace, table, td, when } from '../dom.js';

export function hosts(main) {
  document.title = 'Hosts · vmplane';
  const abort = new AbortController();
  const err = h('div', { id: 'hosts-error' });
  const { el: tableEl, tbody } = table('Hosts', ['Name', 'Status', 'Driver', 'Region', 'vCPUs used', 'Memory used', 'Disk used', 'Last heartbeat', 'Actions'], { id: 'host-table' });
  replace(main, h('div', { class: 'heading' }, h('h1', {}, 'Hosts'), h('button', { type: 'button', class: 'secondary', id: 'hosts-refresh', onclick: () => load() }, 'Refresh')), err, tableEl);

  async function toggle(host) {
    const action = host.cordoned ? 'uncordon' : 'cordon';
    try {
      await api('POST', `/v1/hosts/${seg(host.id)}/${action}`, undefined, { signal: abort.signal });
      notice(`${host.name}: ${action} accepted.`);
      setTimeout(load, 500);
    } catch (e) {
      if (!abort.signal.aborted) notice(`${action} refused: ${describe(e)}`, 'error');
    }
  }

  function row(x) {
    const used = x.used ?? {};
    return h(
      'tr',
      { dataset: { hostId: x.id } },
      td('Name', x.name, h('span', { class: 'id' }, x.id)),
      td('Status', badge(x.status), x.cordoned ? h('span', { class: 'badge status-cordoned' }, 'cordoned') : null),
      td('Driver', x.driver, x.driver_detail ? h('span', { class: 'id' }, x.driver_detail) : null),
      td('Region', x.region ?? '—'),
      td('vCPUs used', `${used.vcpus ?? 0} / ${x.cpus}`),
      td('Memory used', `${mib(used.memory_mib ?? 0)} / ${mib(x.memory_mib)}`),
      td('Disk used', `${used.disk_gb ?? 0} / ${x.disk_gb} GB`),
      td('Last heartbeat', when(x.last_heartbeat)),
      td('Actions', h('button', { type: 'button', class: 'secondary', onclick: () => toggle(x) }, x.cordoned ? 'Uncordon' : 'Cordon')),
    );
  }

  async function load() {
    try {
      const list = await api('GET', '/v1/hosts', undefined, { signal: abort.signal });
      tbody.replaceChildren(...list.map(row));
      replace(err);
    } catch (e) {
      if (!abort.signal.aborted) replace(err, errorBox(e));
    }
  }
  load();
  return () => abort.abort();
}
