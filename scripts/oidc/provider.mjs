// A real OpenID Connect provider for Ferry's end-to-end SSO tests: panva's oidc-provider (OpenID-certified) with one
// confidential client, accounts from a JSON file, and a minimal plain-HTML (no JavaScript) login page, all on one
// loopback HTTP listener. Installed by scripts/oidc/install.sh, run by scripts/oidc/start.sh; see README.md next to
// this file for the environment and the HTTP sequences a test follows.
//
// Everything is in memory (oidc-provider's default adapter): a restart forgets every session, grant and token, and
// the signing key is generated anew at each start.

import { createRequire } from 'node:module';
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const PREFIX = resolve(process.env.OIDC_NODE_PREFIX || join(HERE, '..', '..', 'target', 'oidc'));

function fail(msg) {
  console.error(`oidc/provider: error: ${msg}`);
  process.exit(2);
}

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) fail(`environment variable ${name} is required`);
    return fallback;
  }
  return value;
}

function seconds(name, fallback) {
  const raw = env(name, String(fallback));
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) fail(`${name} must be a positive integer (seconds), not ${JSON.stringify(raw)}`);
  return n;
}

function flag(name, fallback) {
  const raw = env(name, fallback ? '1' : '0');
  if (!['0', '1', 'true', 'false'].includes(raw)) fail(`${name} must be 0 or 1, not ${JSON.stringify(raw)}`);
  return raw === '1' || raw === 'true';
}

const PORT = Number(env('OIDC_PORT'));
if (!Number.isSafeInteger(PORT) || PORT <= 0 || PORT > 65535) fail(`OIDC_PORT must be a TCP port, not ${process.env.OIDC_PORT}`);
const ISSUER = `http://127.0.0.1:${PORT}`;
const CLIENT_ID = env('OIDC_CLIENT_ID');
const CLIENT_SECRET = env('OIDC_CLIENT_SECRET');
const REDIRECT_URIS = env('OIDC_REDIRECT_URIS').split(',').map((s) => s.trim()).filter(Boolean);
if (REDIRECT_URIS.length === 0) fail('OIDC_REDIRECT_URIS names no redirect URI');
const ACCOUNTS = resolve(env('OIDC_ACCOUNTS'));
const ID_TOKEN_TTL = seconds('OIDC_ID_TOKEN_TTL', 60);
const ACCESS_TOKEN_TTL = seconds('OIDC_ACCESS_TOKEN_TTL', 60);
const REFRESH_TOKEN_TTL = seconds('OIDC_REFRESH_TOKEN_TTL', 3600);
const DEVICE_CODE_TTL = seconds('OIDC_DEVICE_CODE_TTL', 600);
const DEVICE_INTERVAL = seconds('OIDC_DEVICE_INTERVAL', 1);
const ROTATE_REFRESH_TOKEN = flag('OIDC_ROTATE_REFRESH_TOKEN', false);
const SESSION_TTL = Math.max(86400, REFRESH_TOKEN_TTL);

// oidc-provider lives in PREFIX/node_modules (scripts/oidc/install.sh puts it there), not next to this file.
let Provider;
try {
  const entry = createRequire(join(PREFIX, 'package.json')).resolve('oidc-provider');
  ({ default: Provider } = await import(pathToFileURL(entry).href));
} catch (err) {
  fail(`cannot load oidc-provider from ${PREFIX}/node_modules (run scripts/oidc/install.sh): ${err.message}`);
}

// ---- accounts --------------------------------------------------------------------------------------------------

// Re-read on every lookup, so that a test may edit the file while the provider runs (disable or remove a user,
// change groups): the next sign-in, refresh or userinfo call sees the change.
function readAccounts() {
  const list = JSON.parse(readFileSync(ACCOUNTS, 'utf8'));
  if (!Array.isArray(list)) throw new Error(`${ACCOUNTS}: expected a JSON array of accounts`);
  return list;
}

function activeAccount(sub) {
  const a = readAccounts().find((x) => x && x.sub === sub);
  return a && a.disabled !== true ? a : undefined;
}

function toAccount(a) {
  return {
    accountId: a.sub,
    // oidc-provider keeps only the claims of the granted scopes (see `claims` below).
    async claims() {
      return {
        sub: a.sub,
        name: a.name,
        preferred_username: a.sub,
        email: a.email,
        email_verified: a.email === undefined ? undefined : (a.email_verified ?? true),
        groups: Array.isArray(a.groups) ? a.groups : [],
      };
    },
  };
}

// ---- keys ------------------------------------------------------------------------------------------------------

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: `ferry-test-${randomUUID()}`, alg: 'RS256', use: 'sig' };

// ---- pages -----------------------------------------------------------------------------------------------------

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

const page = (title, body) => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body>
<h1>${esc(title)}</h1>
${body}
</body></html>
`;

// ---- provider --------------------------------------------------------------------------------------------------

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    client_name: 'Ferry (test)',
    redirect_uris: REDIRECT_URIS,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    // client_secret_post is accepted too: oidc-provider treats basic and post as one method for client secrets.
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  responseTypes: ['code'],
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 supports
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Put the granted scopes' claims into the ID token too, not only into userinfo.
  conformIdTokenClaims: false,
  findAccount: async (_ctx, sub) => {
    const a = activeAccount(sub);
    return a ? toAccount(a) : undefined;
  },
  // oidc-provider issues refresh tokens only for the offline_access scope (which it drops unless prompt=consent):
  // here every code or device-code exchange by a client allowed the refresh_token grant gets one.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Tokens outlive the browser session (the default ties them to it unless offline_access was granted).
  expiresWithSession: async () => false,
  rotateRefreshToken: () => ROTATE_REFRESH_TOKEN,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    ClientCredentials: ACCESS_TOKEN_TTL,
    DeviceCode: DEVICE_CODE_TTL,
    IdToken: ID_TOKEN_TTL,
    RefreshToken: REFRESH_TOKEN_TTL,
    Interaction: 600,
    Session: SESSION_TTL,
    Grant: SESSION_TTL,
  },
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  clientBasedCORS: () => false,
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none',
    },
    deviceFlow: {
      enabled: true,
      // The same forms as oidc-provider's defaults (`form` carries the fields), without styling or JavaScript.
      userCodeInputSource: async (ctx, form, _out, err) => {
        let msg = '<p>Enter the code displayed on your device</p>';
        if (err && (err.userCode || err.name === 'NoCodeError')) msg = '<p class="error">The code you entered is incorrect. Try again</p>';
        else if (err && err.name === 'AbortedError') msg = '<p class="error">The Sign-in request was interrupted</p>';
        else if (err) msg = `<p class="error">There was an error processing your request: ${esc(err.message)}</p>`;
        ctx.type = 'html';
        ctx.body = page('Device sign-in', `${msg}\n${form}\n<button type="submit" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
        ctx.type = 'html';
        ctx.body = page('Confirm device', `<p>${esc(client.clientName || client.clientId)} shows the code <code>${esc(userCode)}</code>.</p>
${form}
<button type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
      },
      successSource: async (ctx) => {
        ctx.type = 'html';
        ctx.body = page('Sign-in success', '<p>Your device is signed in; you can close this page.</p>');
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<p><strong>${esc(k)}</strong>: <span class="${esc(k)}">${esc(v)}</span></p>`).join('\n'));
  },
};

const provider = new Provider(ISSUER, configuration);

// RFC 8628's polling interval: oidc-provider sends none (clients then wait 5 s between polls); tests want it short.
provider.on('device_authorization.success', (_ctx, body) => { body.interval = DEVICE_INTERVAL; });
for (const event of ['server_error', 'grant.error', 'authorization.error', 'introspection.error', 'revocation.error',
  'userinfo.error', 'end_session.error', 'device_authorization.error', 'code_verification.error']) {
  provider.on(event, (_ctx, err) => {
    if (err?.name === 'AuthorizationPending') return; // device-flow polling before the user signed in
    const detail = [err?.error_description, err?.error_detail].filter(Boolean).join('; ');
    console.error(`oidc/provider: ${event}: ${err?.name}: ${err?.message}${detail ? ` (${detail})` : ''}`);
  });
}

// ---- interactions ----------------------------------------------------------------------------------------------

function loginPage(uid, error) {
  return page('Sign-in', `${error ? `<p class="error">${esc(error)}</p>\n` : ''}<form id="login" method="post" action="/interaction/${esc(uid)}">
<input type="text" name="login" placeholder="user" autofocus>
<input type="password" name="password" placeholder="password">
<button type="submit">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`);
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Grants everything the request asked for: the scopes of the authorization (or device) request plus whatever the
// consent prompt reports missing. Consent is never asked of the user.
async function grantAll(details, accountId) {
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
    if (grant && grant.accountId !== accountId) grant = undefined;
  }
  grant ||= new provider.Grant({ accountId, clientId: details.params.client_id });
  if (details.params.scope) grant.addOIDCScope(details.params.scope);
  const missing = details.prompt?.name === 'consent' ? details.prompt.details : {};
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return send(res, 400, page('Error', `<p class="error">no interaction in progress (${esc(err.message)}): `
      + 'start again at the authorization or device endpoint, with the cookies it sets</p>'));
  }
  if (details.uid !== uid) {
    return send(res, 400, page('Error', '<p class="error">this is not the interaction of this browser (cookie mismatch)</p>'));
  }
  const prompt = details.prompt.name;

  if (action === 'abort') {
    if (req.method !== 'POST') return send(res, 405, 'POST only\n', 'text/plain');
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
  }
  if (action !== '') return send(res, 404, 'not found\n', 'text/plain');

  if (prompt === 'consent') {
    // Already signed in (a session cookie): consent is automatic, on GET as on POST.
    const grantId = await grantAll(details, details.session.accountId);
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (prompt !== 'login') {
    return send(res, 501, page('Error', `<p class="error">unsupported prompt ${esc(prompt)}</p>`));
  }
  if (req.method === 'GET') return send(res, 200, loginPage(uid));
  if (req.method !== 'POST') return send(res, 405, 'GET or POST\n', 'text/plain');

  const form = await readForm(req);
  const login = form.get('login') || '';
  const password = form.get('password') || '';
  const account = login ? activeAccount(login) : undefined;
  if (!account || typeof account.password !== 'string' || account.password !== password) {
    return send(res, 401, loginPage(uid, 'Invalid user or password.'));
  }
  // Sign-in and consent in one step: the interaction's result carries both, so no consent prompt follows.
  const grantId = await grantAll(details, account.sub);
  return provider.interactionFinished(req, res, {
    login: { accountId: account.sub, amr: ['pwd'] },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

// ---- server ----------------------------------------------------------------------------------------------------

const callback = provider.callback();
const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/([a-z]+))?\/?$/;

const server = createServer((req, res) => {
  const path = new URL(req.url, ISSUER).pathname;
  res.on('finish', () => console.error(`oidc/provider: ${req.method} ${path} ${res.statusCode}`));
  const m = INTERACTION.exec(path);
  if (!m) return callback(req, res);
  interaction(req, res, m[1], m[2] || '').catch((err) => {
    console.error(`oidc/provider: interaction error: ${err.stack || err}`);
    if (!res.headersSent) send(res, 500, page('Error', `<p class="error">${esc(err.message)}</p>`));
    else res.destroy();
  });
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

try {
  readAccounts();
} catch (err) {
  fail(`OIDC_ACCOUNTS: ${err.message}`);
}

server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${PORT}: ${err.message}`));
server.listen(PORT, '127.0.0.1', () => {
  console.log(`ready ${ISSUER}`);
});
