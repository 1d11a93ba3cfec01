// A dev OpenID provider for Portcullis' demo and tests: the npm package
// oidc-provider (OpenID Certified) with a login form that sets the account and
// the authentication methods (amr), from which the acr follows. Never for
// production: there are no passwords, anyone may sign in as anyone.
//
//   node server.js --config provider.json
//
// provider.json: {"issuer": "http://127.0.0.1:9200", "port": 9200,
//   "clients": [{client_id, client_secret?, redirect_uris, post_logout_redirect_uris,
//                backchannel_logout_uri?, backchannel_logout_session_required?}],
//   "accounts": {"alice": {"email", "email_verified" (default true), "name", "groups": [],
//                "methods": ["otp"]}},
//   "id_token_ttl": 3600, "pkce_required": true, "pkce_optional_clients": [],
//   "rotate_refresh_token": true}
// Prints "listening <issuer>" once it accepts connections.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { interactionPolicy } from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const configPath = args[args.indexOf('--config') + 1];
if (!args.includes('--config') || !configPath) {
  console.error('usage: node server.js --config provider.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const accounts = config.accounts
  ?? JSON.parse(readFileSync(join(here, 'demo-accounts.json'), 'utf8'));

// What each method proves, and the acr it earns (strongest wins).
const METHODS = {
  otp: 'One-time code (authenticator app)',
  swk: 'Software key (passkey synced by a password manager)',
  hwk: 'Hardware security key',
  fido: 'FIDO2 platform authenticator',
};
const ACR_RANK = { pwd: 0, mfa: 1, phr: 2, phrh: 3 };
function acrFor(amr) {
  if (amr.includes('hwk') || amr.includes('fido')) return 'phr';
  if (amr.some((m) => m in METHODS)) return 'mfa';
  return 'pwd';
}
function satisfies(acr, requested) {
  const have = ACR_RANK[acr] ?? -1;
  return requested.some((want) => want in ACR_RANK && have >= ACR_RANK[want]);
}

// Like Keycloak's and Okta's step-up: a requested acr_values that the current
// session doesn't reach makes the provider ask for a new sign-in. Once the user
// went through the form, its result stands even if it falls short (the relying
// party must check what it got; the provider does not loop).
const policy = interactionPolicy.base();
policy.get('login').checks.add(new interactionPolicy.Check(
  'acr_values_unmet',
  'the requested authentication context needs a new sign-in',
  (ctx) => {
    const requested = (ctx.oidc.params.acr_values ?? '').split(' ').filter(Boolean);
    if (!requested.length || !ctx.oidc.session.accountId || ctx.oidc.result?.login) {
      return interactionPolicy.Check.NO_NEED_TO_PROMPT;
    }
    return satisfies(ctx.oidc.acr, requested)
      ? interactionPolicy.Check.NO_NEED_TO_PROMPT
      : interactionPolicy.Check.REQUEST_PROMPT;
  },
));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: client.client_secret ? 'client_secret_basic' : 'none',
    ...client,
  })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  acrValues: Object.keys(ACR_RANK),
  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    // What step-up is about: always in the ID token, whatever was asked.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // The ID token carries the claims the scopes ask for: the gateway reads no userinfo.
  conformIdTokenClaims: false,
  pkce: {
    required: (ctx, client) => config.pkce_required !== false
      && !(config.pkce_optional_clients ?? []).includes(client.clientId),
  },
  // Refresh tokens for every client allowed the grant, like Keycloak (the
  // offline_access scope needs prompt=consent in this package).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: config.rotate_refresh_token !== false,
  ttl: {
    AccessToken: config.id_token_ttl ?? 3600,
    AuthorizationCode: 60,
    IdToken: config.id_token_ttl ?? 3600,
    RefreshToken: 24 * 3600,
    Interaction: 600,
    Session: 24 * 3600,
    Grant: 24 * 3600,
  },
  interactions: {
    policy,
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  // First-party clients: no consent screen.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    await grant.save();
    return grant;
  },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: account.email ?? `${id}@example.com`,
          email_verified: account.email_verified ?? true,
          name: account.name ?? id,
          groups: account.groups ?? [],
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    // OpenID Connect Back-Channel Logout 1.0: a sign-out here POSTs a logout
    // token to each client's backchannel_logout_uri (the gateway revokes the
    // session on every replica); with backchannel_logout_session_required the
    // ID token and the logout token carry the session's sid.
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `
          <h1>Sign out of the dev provider?</h1>
          ${form}
          <button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
          <button type="submit" form="op.logoutForm" class="secondary">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<h1>You are signed out of the dev provider.</h1>');
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>The provider could not go on</h1>${Object.entries(out)
      .map(([key, value]) => `<p><b>${esc(key)}</b>: ${esc(value)}</p>`).join('')}`);
  },
});

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>${esc(title)} - dev OpenID provider</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;background:#eef1f5;margin:0;padding:40px 16px;color:#1d2733}
 main{max-width:440px;margin:0 auto;background:#fff;border-radius:8px;padding:24px 28px;box-shadow:0 1px 4px #0002}
 h1{font-size:1.3em;margin-top:0} .banner{font-size:.8em;color:#8a5a00;background:#fff4d6;padding:6px 10px;border-radius:4px}
 label{display:block;margin:8px 0} input[type=text]{width:100%;padding:8px;box-sizing:border-box;font-size:1em}
 .asked{background:#eef4ff;border-left:4px solid #3b6fd8;padding:8px 12px;margin:12px 0}
 .error{background:#fdecec;border-left:4px solid #c33;padding:8px 12px;margin:12px 0}
 button{font-size:1em;padding:9px 16px;border:0;border-radius:4px;background:#3b6fd8;color:#fff;cursor:pointer;margin:12px 8px 0 0}
 button.secondary{background:#d9dee5;color:#1d2733} small{color:#5a6573}
</style></head><body><main>
<p class="banner">Dev OpenID provider (oidc-provider) for demos and tests: no passwords.</p>
${body}</main></body></html>`;
}

function loginForm(uid, details, { account = '', error = '' } = {}) {
  const { params } = details;
  const asked = [];
  if (params.acr_values) asked.push(`authentication context <b>${esc(params.acr_values)}</b>`);
  if (params.max_age !== undefined) asked.push(`a sign-in within the last <b>${esc(params.max_age)} s</b>`);
  if (params.prompt) asked.push(`prompt <b>${esc(params.prompt)}</b>`);
  const names = Object.keys(accounts).map((id) => {
    const a = accounts[id];
    return `<li><code>${esc(id)}</code>: groups ${esc((a.groups ?? []).join(', ') || 'none')}; `
      + `enrolled ${esc(['pwd', ...(a.methods ?? [])].join(', '))}</li>`;
  }).join('');
  const boxes = Object.entries(METHODS).map(([method, title]) => `
    <label><input type="checkbox" name="methods" value="${method}"> ${esc(title)}
      <small>(amr ${method})</small></label>`).join('');
  return page('Sign in', `
    <h1>Sign in to ${esc(details.params.client_id)}</h1>
    ${asked.length ? `<div class="asked">The application asks for ${asked.join(' and ')}.</div>` : ''}
    ${error ? `<div class="error" role="alert">${esc(error)}</div>` : ''}
    <form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
      <label>User <input type="text" name="login" value="${esc(account)}" required autofocus></label>
      <p>Password: always (amr pwd). Also verify with:</p>
      ${boxes}
      <button type="submit" name="action" value="sign_in">Sign in</button>
      <button type="submit" name="action" value="cancel" class="secondary" formnovalidate>Cancel</button>
    </form>
    <p><small>Demo users:</small></p><ul><small>${names}</small></ul>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  const form = new URLSearchParams(body);
  return { login: (form.get('login') ?? '').trim(), methods: form.getAll('methods'), action: form.get('action') };
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<h1>This sign-in page is stale; start again.</h1>'));
    return;
  }
  if (req.method === 'GET' && !action) {
    send(res, 200, loginForm(uid, details, { account: details.session?.accountId ?? '' }));
    return;
  }
  if (req.method !== 'POST' || action !== 'login') {
    send(res, 405, page('Error', '<h1>Method not allowed</h1>'));
    return;
  }
  const form = await readForm(req);
  if (form.action === 'cancel') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'the user cancelled the sign-in at the provider',
    }, { mergeWithLastSubmission: false });
    return;
  }
  const account = accounts[form.login];
  if (!account) {
    send(res, 200, loginForm(uid, details, { account: form.login, error: `No user ${form.login}.` }));
    return;
  }
  const enrolled = new Set(account.methods ?? []);
  const missing = form.methods.filter((m) => !(m in METHODS) || !enrolled.has(m));
  if (missing.length) {
    send(res, 200, loginForm(uid, details, {
      account: form.login,
      error: `${form.login} has no ${missing.join(', ')} enrolled.`,
    }));
    return;
  }
  const amr = ['pwd', ...form.methods.filter((m, i, all) => all.indexOf(m) === i)];
  await provider.interactionFinished(req, res, {
    login: { accountId: form.login, amr, acr: acrFor(amr), remember: false },
  }, { mergeWithLastSubmission: false });
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?$/.exec(req.url.split('?')[0]);
  if (!match) {
    callback(req, res);
    return;
  }
  try {
    await interaction(req, res, match[1], match[2]);
  } catch (error) {
    send(res, 400, page('Error', `<h1>Sign-in failed</h1><p>${esc(error.message)}</p>`));
  }
});

const { port } = new URL(config.issuer);
server.listen(Number(config.port ?? port), '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
