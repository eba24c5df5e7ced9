// Sign in with a token: the admin token or an API key secret. It is checked
// against the gateway, then kept in this tab's sessionStorage only.

import { ApiError, api, clearSession, saveSession } from '../api.js';
import { describe, field, h, replace } from '../dom.js';

export function signIn(main, { done }) {
  document.title = 'Sign in · vmplane';
  const token = h('input', { type: 'password', name: 'token', id: 'token', autocomplete: 'off', required: true, spellcheck: 'false' });
  const org = h('input', { type: 'text', name: 'org', id: 'org', autocomplete: 'off', placeholder: 'org_…', spellcheck: 'false' });
  const project = h('input', { type: 'text', name: 'project', id: 'project', autocomplete: 'off', placeholder: 'prj_…', spellcheck: 'false' });
  const err = h('div', { id: 'signin-error' });
  const submit = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    { class: 'card narrow', id: 'signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', {}, 'Use the admin token or an API key secret. It stays in this browser tab (session storage) and is sent only to this gateway.'),
    field('Token', token),
    h(
      'details',
      {},
      h('summary', {}, 'Org and project (optional)'),
      field('Org id', org, 'The admin acts in the default org unless it names one; an API key acts in its own.'),
      field('Project id', project, 'Without one, lists span the org and new resources go to the default project.'),
    ),
    err,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    replace(err);
    saveSession({ token: token.value.trim(), org: org.value.trim(), project: project.value.trim() });
    try {
      // Any authenticated read proves the token (and the org/project names).
      await api('GET', '/v1/vms?limit=1', undefined, { quiet: true });
      done();
    } catch (e2) {
      clearSession();
      replace(err, h('p', { class: 'error', role: 'alert' }, e2 instanceof ApiError && e2.status === 401 ? 'The gateway did not accept this token.' : describe(e2)));
      submit.disabled = false;
      token.focus();
    }
  });
  replace(main, form);
  token.focus();
  return null;
}
