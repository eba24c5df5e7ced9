// The create form: name, image (from /v1/images), a plan (from /v1/plans) or vCPUs, memory
// and disk, SSH keys, user data, and port forwards; POST /v1/vms, then the
// new VM's page, where its status follows live.

import { api, seg } from '../api.js';
import { describe, field, h, notice, replace } from '../dom.js';

export function createVm(main) {
  document.title = 'Create a VM · vmplane';
  const abort = new AbortController();

  const name = h('input', { id: 'vm-name', name: 'name', required: true, maxlength: 63, pattern: '[a-z0-9]([a-z0-9\\-]*[a-z0-9])?', autocomplete: 'off', spellcheck: 'false' });
  const image = h('select', { id: 'vm-image', name: 'image' }, h('option', { value: '' }, 'Default image'));
  const sizing = h('fieldset', { class: 'sizing' });
  const byPlan = h('input', { type: 'radio', name: 'sizing', id: 'sizing-custom', value: 'custom', checked: true });
  const byPlan2 = h('input', { type: 'radio', name: 'sizing', id: 'sizing-plan', value: 'plan' });
  const plan = h('select', { id: 'vm-plan', name: 'plan' }, h('option', { value: '' }, 'Choose a plan'));
  const vcpus = h('input', { id: 'vm-vcpus', name: 'vcpus', type: 'number', min: 1, max: 64, value: 1, inputmode: 'numeric' });
  const memory = h('input', { id: 'vm-memory', name: 'memory_mib', type: 'number', min: 64, step: 64, value: 512, inputmode: 'numeric' });
  const disk = h('input', { id: 'vm-disk', name: 'disk_gb', type: 'number', min: 1, value: 10, inputmode: 'numeric' });
  const planBox = h('div', { class: 'group', hidden: true }, field('Plan', plan, 'From the gateway\'s catalog; it sets vCPUs, memory and disk.'));
  const customBox = h('div', { class: 'group grid3' }, field('vCPUs', vcpus), field('Memory (MiB)', memory), field('Disk (GB)', disk));
  replace(
    sizing,
    h('legend', {}, 'Size'),
    h('div', { class: 'radios' }, h('label', {}, byPlan, ' vCPUs, memory and disk'), h('label', {}, byPlan2, ' A plan')),
    customBox,
    planBox,
  );
  for (const r of [byPlan, byPlan2]) {
    r.addEventListener('change', () => {
      const usePlan = byPlan2.checked;
      planBox.hidden = !usePlan;
      customBox.hidden = usePlan;
      plan.required = usePlan;
    });
  }
  const sshKey = h('textarea', { id: 'vm-ssh-key', name: 'ssh_keys', rows: 3, spellcheck: 'false', placeholder: 'ssh-ed25519 AAAA… you@host' });
  const userData = h('textarea', { id: 'vm-user-data', name: 'user_data', rows: 5, spellcheck: 'false', placeholder: '#!/bin/sh\necho hello' });

  const forwards = h('ul', { class: 'forwards', id: 'port-forwards' });
  let fwdCount = 0;
  function addForward() {
    fwdCount += 1;
    const n = fwdCount;
    const guest = h('input', { type: 'number', min: 1, max: 65535, required: true, class: 'guest-port', id: `fwd-guest-${n}`, inputmode: 'numeric' });
    const host = h('input', { type: 'number', min: 1, max: 65535, class: 'host-port', id: `fwd-host-${n}`, placeholder: 'any', inputmode: 'numeric' });
    const proto = h('select', { class: 'protocol', id: `fwd-proto-${n}` }, h('option', { value: 'tcp' }, 'TCP'), h('option', { value: 'udp' }, 'UDP'));
    const item = h('li', { class: 'forward' });
    const remove = h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove port forward ${n}` }, 'Remove');
    remove.addEventListener('click', () => {
      item.remove();
      addBtn.focus();
    });
    replace(item, field('Guest port', guest), field('Host port', host), field('Protocol', proto), remove);
    forwards.append(item);
    guest.focus();
  }
  const addBtn = h('button', { type: 'button', class: 'secondary', id: 'add-forward' }, 'Add a port forward');
  addBtn.addEventListener('click', addForward);

  const err = h('div', { id: 'create-error' });
  const submit = h('button', { type: 'submit', id: 'create-submit' }, 'Create');
  const form = h(
    'form',
    { class: 'card', id: 'create-form', 'aria-labelledby': 'create-title' },
    h('h1', { id: 'create-title' }, 'Create a VM'),
    field('Name', name, 'Lower-case letters, digits and hyphens; at most 63.'),
    field('Image', image),
    sizing,
    field('SSH public keys', sshKey, 'One per line; root may log in with them through the forwarded SSH port.'),
    field('User data', userData, 'cloud-init: a #! script or #cloud-config.'),
    h('fieldset', {}, h('legend', {}, 'Port forwards'), forwards, addBtn),
    err,
    h('div', { class: 'actions' }, h('a', { href: '#/vms', class: 'button secondary' }, 'Cancel'), submit),
  );

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    replace(err);
    const body = { name: name.value.trim() };
    if (image.value) body.image = image.value;
    if (byPlan2.checked) body.plan = plan.value;
    else Object.assign(body, { vcpus: Number(vcpus.value), memory_mib: Number(memory.value), disk_gb: Number(disk.value) });
    const keys = sshKey.value.split('\n').map((k) => k.trim()).filter(Boolean);
    if (keys.length) body.ssh_keys = keys;
    if (userData.value.trim()) body.user_data = userData.value;
    const pf = [...forwards.querySelectorAll('li')].map((li) => {
      const f = { guest_port: Number(li.querySelector('.guest-port').value), protocol: li.querySelector('.protocol').value };
      const hp = li.querySelector('.host-port').value;
      if (hp) f.host_port = Number(hp);
      return f;
    });
    if (pf.length) body.port_forwards = pf;
    submit.disabled = true;
    try {
      const vm = await api('POST', '/v1/vms', body, { signal: abort.signal });
      notice(`Creating ${vm.name} (${vm.id}).`);
      location.hash = `#/vms/${seg(vm.id)}`;
    } catch (e2) {
      if (abort.signal.aborted) return;
      replace(err, h('p', { class: 'error', role: 'alert' }, describe(e2)));
      submit.disabled = false;
      err.scrollIntoView({ block: 'nearest' });
    }
  });

  replace(main, form);
  name.focus();

  api('GET', '/v1/images', undefined, { signal: abort.signal })
    .then((images) => {
      const names = [...new Set(images.map((i) => i.name))].sort();
      for (const n of names) image.append(h('option', { value: n, selected: n === 'debian-minimal' }, n));
    })
    .catch(() => {
      // The default image is still there to choose.
    });
  api('GET', '/v1/plans', undefined, { signal: abort.signal })
    .then((plans) => {
      for (const p of plans) {
        const gpu = p.gpu ? `, ${p.gpu.count} × ${p.gpu.model ?? 'GPU'}` : '';
        plan.append(h('option', { value: p.name }, `${p.name}: ${p.vcpus} vCPU, ${p.memory_mib} MiB, ${p.disk_gb} GB${gpu}`));
      }
    })
    .catch(() => {
      // Without plans, sizes are still there to give.
    });

  return () => abort.abort();
}
