// The console's shell: sign-in, navigation, and a router over the URL's
// fragment (`#/vms/vm_…`), so the gateway serves one page and every view is
// a plain ES module loaded from it.

import { ApiError, api, clearSession, saveSession, session, setUnauthorizedHandler } from './api.js';
import { notice, replace } from './dom.js';
import { signIn } from './views/signin.js';
import { vmList } from './views/vms.js';
import { createVm } from './views/create.js';
import { vmPage } from './views/vm.js';
import { volumes } from './views/volumes.js';
import { hosts } from './views/hosts.js';

const main = document.getElementById('main');
let cleanup = null;

/** Which view a fragment opens, and its parameters. */
function route(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0 || (parts[0] === 'vms' && parts.length === 1)) return { section: 'vms', view: vmList };
  if (parts[0] === 'vms' && parts[1] === 'new') return { section: 'vms', view: createVm };
  if (parts[0] === 'vms' && parts.length === 2) return { section: 'vms', view: vmPage, params: { id: parts[1] } };
  if (parts[0] === 'volumes') return { section: 'volumes', view: volumes };
  if (parts[0] === 'hosts') return { section: 'hosts', view: hosts };
  return null;
}

const orgBox = document.getElementById('org-switch-box');
const orgSwitch = document.getElementById('org-switch');

function chrome(signedIn) {
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  if (!signedIn) orgBox.hidden = true;
  label();
}

/** Who acts where: the org by id unless the switcher shows it. */
function label() {
  const s = session();
  document.getElementById('who-label').textContent = s
    ? `Signed in${s.org && orgBox.hidden ? ` · org ${s.org}` : ''}${s.project ? ` · project ${s.project}` : ''}`
    : '';
}

/** The token GET /v1/orgs refused (an API key): not asked again. */
let notAdmin = null;

/**
 * The admin may act in any org: a list of them to switch between, read at
 * each view (orgs come and go, and are few). An API key acts in its own org
 * only (GET /v1/orgs is 403), so it has none.
 */
async function showOrgs() {
  const token = session()?.token;
  if (!token || token === notAdmin) return;
  let orgs;
  try {
    orgs = await api('GET', '/v1/orgs', undefined, { quiet: true });
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) notAdmin = token;
    return;
  }
  const s = session();
  if (!s || s.token !== token) return;
  const current = s.org ?? orgs[0]?.id;
  replace(orgSwitch, ...orgs.map((o) => Object.assign(document.createElement('option'), { value: o.id, textContent: o.name, selected: o.id === current })));
  orgBox.hidden = false;
  label();
}

orgSwitch.addEventListener('change', () => {
  const s = session();
  if (!s) return;
  // A project belongs to one org: switching orgs leaves it.
  saveSession({ token: s.token, org: orgSwitch.value, project: null });
  notice(`Acting in org ${orgSwitch.selectedOptions[0]?.textContent ?? orgSwitch.value}.`);
  location.hash = '#/vms';
  render();
});

/** Show the view the address asks for (or the sign-in form). */
export function render() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // a view that failed to close is gone anyway
    }
    cleanup = null;
  }
  const signedIn = session() !== null;
  chrome(signedIn);
  if (!signedIn) {
    cleanup = signIn(main, { done: render });
    return;
  }
  showOrgs();
  const r = route(location.hash);
  for (const a of document.querySelectorAll('#nav a')) {
    if (r && a.dataset.section === r.section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!r) {
    replace(main, Object.assign(document.createElement('h1'), { textContent: 'Not found' }));
    document.title = 'Not found · vmplane';
    return;
  }
  cleanup = r.view(main, r.params ?? {}) ?? null;
  // Move focus to the new content, as a page load would, for keyboard and screen reader users.
  if (document.activeElement === document.body || !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

setUnauthorizedHandler(() => {
  if (!session()) return;
  clearSession();
  notice('The gateway refused the token: sign in again.', 'error');
  render();
});

document.getElementById('sign-out').addEventListener('click', () => {
  clearSession();
  if (location.hash === '#/vms') render();
  else location.hash = '#/vms';
});

window.addEventListener('hashchange', render);
render();
