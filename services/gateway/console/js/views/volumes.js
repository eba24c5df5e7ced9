// Volumes: the list, create, delete (with confirmation), attach to a VM and
// detach.

import { api, listAll, seg } from '../api.js';
import { badge, confirmDialog, describe, errorBox, field, h, notice, replace, table, td, when } from '../dom.js';

export function volumes(main) {
  document.title = 'Volumes · vmplane';
  const abort = new AbortController();
  const err = h('div', { id: 'volumes-error' });
  const { el: tableEl, tbody } = table('Volumes', ['Name', 'Status', 'Size', 'Attached to', 'Host', 'Created', 'Actions'], { id: 'volume-table' });
  const empty = h('p', { class: 'muted', hidden: true }, 'No volumes yet.');

  const name = h('input', { id: 'volume-name', name: 'name', required: true, maxlength: 63, autocomplete: 'off', spellcheck: 'false' });
  const size = h('input', { id: 'volume-size', name: 'size_gb', type: 'number', min: 1, value: 1, required: true, inputmode: 'numeric' });
  const createErr = h('div');
  const create = h(
    'form',
    { class: 'card', id: 'volume-form', 'aria-labelledby': 'volume-form-title' },
    h('h2', { id: 'volume-form-title' }, 'Create a volume'),
    h('div', { class: 'grid3' }, field('Name', name), field('Size (GB)', size)),
    createErr,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create volume')),
  );
  create.addEventListener('submit', async (e) => {
    e.preventDefault();
    replace(createErr);
    try {
      const v = await api('POST', '/v1/volumes', { name: name.value.trim(), size_gb: Number(size.value) }, { signal: abort.signal });
      notice(`Creating volume ${v.name}.`);
      name.value = '';
      setTimeout(load, 500);
    } catch (e2) {
      if (!abort.signal.aborted) replace(createErr, h('p', { class: 'error', role: 'alert' }, describe(e2)));
    }
  });

  replace(main, h('div', { class: 'heading' }, h('h1', {}, 'Volumes'), h('button', { type: 'button', class: 'secondary', id: 'volumes-refresh', onclick: () => load() }, 'Refresh')), err, tableEl, empty, create);

  function attachForm(vol) {
    const vmId = h('input', { name: 'vm', required: true, placeholder: 'vm_…', autocomplete: 'off', spellcheck: 'false', id: `attach-vm-${vol.id}` });
    const mount = h('input', { name: 'mount_path', required: true, value: `/mnt/${vol.name}`, autocomplete: 'off', spellcheck: 'false', id: `attach-path-${vol.id}` });
    const f = h('form', { class: 'inline' }, field('VM id', vmId), field('Mount path', mount), h('button', { type: 'submit', class: 'secondary' }, 'Attach'));
    f.addEventListener('submit', async (e) => {
      e.preventDefault();
      await run(`Attach ${vol.name}`, () => api('POST', `/v1/vms/${seg(vmId.value.trim())}/volumes/${seg(vol.id)}`, { mount_path: mount.value.trim() }, { signal: abort.signal }));
    });
    return f;
  }

  async function run(what, fn) {
    try {
      await fn();
      notice(`${what}: accepted.`);
      setTimeout(load, 500);
    } catch (e) {
      if (!abort.signal.aborted) notice(`${what} refused: ${describe(e)}`, 'error');
    }
  }

  function row(v) {
    const actions = [];
    if (v.vm_id) {
      actions.push(h('button', { type: 'button', class: 'secondary', onclick: () => run(`Detach ${v.name}`, () => api('DELETE', `/v1/vms/${seg(v.vm_id)}/volumes/${seg(v.id)}`, undefined, { signal: abort.signal })) }, 'Detach'));
    } else if (v.status === 'available') {
      const d = h('details', {}, h('summary', {}, 'Attach…'), attachForm(v));
      actions.push(d);
    }
    if (!v.vm_id && v.status !== 'deleting') {
      actions.push(
        h(
          'button',
          {
            type: 'button',
            class: 'danger',
            onclick: async () => {
              if (await confirmDialog({ title: `Delete volume ${v.name}?`, text: `Its data is lost. This cannot be undone.`, confirm: 'Delete' })) {
                await run(`Delete ${v.name}`, () => api('DELETE', `/v1/volumes/${seg(v.id)}`, undefined, { signal: abort.signal }));
              }
            },
          },
          'Delete…',
        ),
      );
    }
    return h(
      'tr',
      { dataset: { volumeId: v.id } },
      td('Name', v.name, h('span', { class: 'id' }, v.id)),
      td('Status', badge(v.status)),
      td('Size', `${v.size_gb} GB`),
      td('Attached to', v.vm_id ? h('a', { href: `#/vms/${seg(v.vm_id)}` }, v.vm_id) : '—'),
      td('Host', v.host_id),
      td('Created', when(v.created_at)),
      td('Actions', h('div', { class: 'row-actions' }, actions)),
    );
  }

  async function load() {
    try {
      const vols = (await listAll('/v1/volumes', { signal: abort.signal })).filter((v) => v.status !== 'deleted');
      tbody.replaceChildren(...vols.map(row));
      empty.hidden = vols.length > 0;
      tableEl.hidden = vols.length === 0;
      replace(err);
    } catch (e) {
      if (!abort.signal.aborted) replace(err, errorBox(e));
    }
  }
  load();
  return () => abort.abort();
}
