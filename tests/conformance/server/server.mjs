// A local OAuth 2.0 authorization server for token-vault's conformance suite and for trying the
// vault out without Understory credentials: panva's `oidc-provider` (an independent, certified
// implementation), configured to behave like Understory's Ory Hydra where the vault depends on it:
//
// - the refresh token rotates on every refresh; a used refresh token presented again gets
//   400 invalid_grant and revokes the whole grant (also when two requests race for one token);
// - a refresh token is issued when the granted scope includes `offline` (Hydra) or
//   `offline_access` (OpenID Connect, which also needs prompt=consent);
// - a client is registered with ONE token endpoint auth method; the other gets 401 invalid_client;
// - the audience is an RFC 8707 `resource` (https://api.understory.io by default);
// - revoking any token of a grant (RFC 7009) revokes the whole grant, and is logged
//   (`revocation.success`, which oidc-provider itself does not emit);
// - tokens outlive the login session, and authorization codes are single use.
//
// Usage: node tests/conformance/server/server.mjs --port 4444
//          [--state FILE]       keep every token and grant in FILE, so a restart keeps them
//          [--events FILE]      append one JSON line per event to FILE (always also on stdout)
//          [--access-ttl SECS]  access token lifetime (default 3599, as Understory)
//          [--code-ttl SECS]    authorization code lifetime (default 600, as Hydra)
//          [--refresh-ttl SECS] refresh token lifetime from its issue (default 30 days, as
//                               Hydra's ttl.refresh_token); a rotated token gets a fresh one
//          [--redirect-uri URI] the clients' registered redirect URI
//          [--exit-with-stdin]  exit when standard input closes, so a test that dies (even by
//                               SIGKILL) cannot leave its server running
//
//        Quirks of other providers (config/presets.toml), for the presets' tests:
//          [--no-rotation]      a refresh keeps the refresh token and its answer carries none
//                               (Google, Salesforce)
//          [--access-type-offline]  a refresh token only when the authorization request carries
//                               access_type=offline, and (oidc-provider's rule for offline_access)
//                               prompt=consent; the offline scopes themselves are ignored (Google)
//          [--omit-expires-in]  token answers without expires_in (Salesforce)
//
// Besides `offline` and `offline_access`, the scope `refresh_token` (Salesforce's) asks for a
// refresh token.
//
// The login and consent pages are oidc-provider's development interactions: any login and
// password are accepted. Nothing here is fit for production.

import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    state: { type: 'string' },
    events: { type: 'string' },
    'access-ttl': { type: 'string', default: '3599' },
    'code-ttl': { type: 'string', default: '600' },
    'refresh-ttl': { type: 'string', default: String(30 * 24 * 3600) },
    'redirect-uri': { type: 'string', default: 'http://localhost:3000/oauth/callback' },
    'exit-with-stdin': { type: 'boolean', default: false },
    'no-rotation': { type: 'boolean', default: false },
    'access-type-offline': { type: 'boolean', default: false },
    'omit-expires-in': { type: 'boolean', default: false },
  },
});
if (!args.port) {
  console.error('usage: server.mjs --port N [--state FILE] [--events FILE] [--access-ttl S] [--code-ttl S]');
  process.exit(2);
}
const port = Number(args.port);
const accessTtl = Number(args['access-ttl']);
const codeTtl = Number(args['code-ttl']);
const refreshTtl = Number(args['refresh-ttl']);
const issuer = `http://${args.host}:${port}`;

// The audience Understory's guide names; the only resource server this server knows.
const AUDIENCE = 'https://api.understory.io';
const RESOURCE_SCOPES = 'booking.read marketing.read';

// The registered clients. The suite knows these values too (tests/conformance/authserver.rs).
// `vault:basic` has a colon in its id and reserved characters in its secret, so Basic
// authentication only works if both are form-urlencoded before base64 (RFC 6749 §2.3.1).
const common = {
  redirect_uris: [args['redirect-uri']],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
};
const CLIENTS = [
  { ...common, client_id: 'vault-post', client_secret: 'vault-post-secret', token_endpoint_auth_method: 'client_secret_post' },
  { ...common, client_id: 'vault:basic', client_secret: 'b4sic secret/+:%&=', token_endpoint_auth_method: 'client_secret_basic' },
  // Refuses authorization requests without a PKCE challenge.
  { ...common, client_id: 'vault-pkce', client_secret: 'vault-pkce-secret', token_endpoint_auth_method: 'client_secret_post' },
];
const PKCE_REQUIRED = new Set(['vault-pkce']);

// ---------------------------------------------------------------------------------------------
// Events: one JSON line each. Token values never appear; a short SHA-256 fingerprint stands in,
// so a test can follow the refresh-token chain without the log holding usable tokens.

const fp = (value) => (value ? createHash('sha256').update(String(value)).digest('base64url').slice(0, 12) : undefined);

function log(event, fields = {}) {
  const line = JSON.stringify({ ts: Date.now(), event, ...fields });
  process.stdout.write(`${line}\n`);
  if (args.events) appendFileSync(args.events, `${line}\n`);
}

// ---------------------------------------------------------------------------------------------
// Storage: every model in one Map, written to --state after each change (atomically, by
// rename), so that stopping and restarting the server keeps tokens, grants and their used marks.

const store = new Map();
if (args.state && existsSync(args.state)) {
  for (const [key, value] of JSON.parse(readFileSync(args.state, 'utf8'))) store.set(key, value);
}

function persist() {
  if (!args.state) return;
  const tmp = `${args.state}.tmp`;
  writeFileSync(tmp, JSON.stringify([...store]));
  renameSync(tmp, args.state);
}

const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken']);

function revokeGrantEverywhere(grantId) {
  for (const [key, value] of store) {
    if (value.payload?.grantId === grantId) store.delete(key);
  }
  store.delete(`Grant:${grantId}`);
  persist();
}

class FileAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : null });
    if (this.model === 'Session') store.set(`sessionUid:${payload.uid}`, { id });
    persist();
  }

  async find(id) {
    const entry = store.get(this.key(id));
    // Expiry is left to the models, which report an expired code as such (invalid_grant).
    return entry ? structuredClone(entry.payload) : undefined;
  }

  async findByUid(uid) {
    const entry = store.get(`sessionUid:${uid}`);
    return entry ? this.find(entry.id) : undefined;
  }

  async findByUserCode() {
    return undefined;
  }

  // Atomic, unlike oidc-provider's own check (it reads the token, then marks it used, with
  // awaits between): two requests racing with one refresh token must not both succeed. As at
  // Hydra, the loser's reuse revokes the whole grant.
  async consume(id) {
    const entry = store.get(this.key(id));
    if (!entry) throw new errors.InvalidGrant(`${this.model} not found`);
    if (entry.payload.consumed) {
      log('reuse_detected', { model: this.model, token: fp(id), grant_id: entry.payload.grantId });
      revokeGrantEverywhere(entry.payload.grantId);
      throw new errors.InvalidGrant(`${this.model === 'RefreshToken' ? 'refresh token' : 'authorization code'} already used`);
    }
    entry.payload.consumed = Math.floor(Date.now() / 1000);
    persist();
  }

  async destroy(id) {
    store.delete(this.key(id));
    persist();
  }

  async revokeByGrantId(grantId) {
    if (!GRANTABLE.has(this.model)) return;
    for (const [key, value] of store) {
      if (key.startsWith(`${this.model}:`) && value.payload?.grantId === grantId) store.delete(key);
    }
    persist();
  }
}

// ---------------------------------------------------------------------------------------------

const OFFLINE_SCOPES = new Set(['offline', 'offline_access', 'refresh_token']);

const configuration = {
  adapter: FileAdapter,
  clients: CLIENTS,
  // Fixed so that the interaction cookies of a browser survive a restart.
  cookies: { keys: ['token-vault-conformance-cookie-key'] },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  scopes: ['openid', 'offline_access', 'offline', 'refresh_token'],
  features: {
    devInteractions: { enabled: true },
    // Only the client a token was issued to may look at it or revoke it.
    introspection: { enabled: true, allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId },
    revocation: { enabled: true, allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId },
    resourceIndicators: {
      enabled: true,
      // A refresh keeps the audience of the authorization, as at Hydra.
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource !== AUDIENCE) throw new errors.InvalidTarget();
        return { scope: RESOURCE_SCOPES, audience: AUDIENCE, accessTokenTTL: accessTtl, accessTokenFormat: 'opaque' };
      },
    },
  },
  pkce: { required: (_ctx, client) => PKCE_REQUIRED.has(client.clientId) },
  rotateRefreshToken: !args['no-rotation'],
  // Hydra issues a refresh token for `offline`; OpenID Connect's `offline_access` and
  // Salesforce's `refresh_token` work too.
  issueRefreshToken: async (_ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && [...OFFLINE_SCOPES].some((scope) => code.scopes.has(scope)),
  // Hydra's tokens do not end with the browser session that granted them.
  expiresWithSession: async () => false,
  // Hydra (fosite) revokes every token of the grant, whichever token is revoked.
  revokeGrantPolicy: () => true,
  ttl: {
    AccessToken: () => accessTtl,
    AuthorizationCode: () => codeTtl,
    RefreshToken: () => refreshTtl,
    Grant: () => 30 * 24 * 3600,
    Session: () => 24 * 3600,
    Interaction: () => 3600,
    IdToken: () => 3600,
  },
};

const provider = new Provider(issuer, configuration);

// --access-type-offline (Google): the offline scopes of the request are dropped, and
// `offline_access` stands in for `access_type=offline`, so that a refresh token is issued exactly
// when that parameter (and prompt=consent, which oidc-provider demands for offline_access) came
// with the authorization request.
if (args['access-type-offline']) {
  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/auth' && ctx.query.client_id) {
      const query = { ...ctx.query };
      const scopes = (query.scope || '').split(' ').filter((scope) => scope && !OFFLINE_SCOPES.has(scope));
      if (query.access_type === 'offline') scopes.push('offline_access');
      log('authorization.access_type', { access_type: query.access_type ?? null, prompt: query.prompt ?? null });
      delete query.access_type;
      query.scope = scopes.join(' ');
      ctx.query = query;
    }
    await next();
  });
}

// --no-rotation and --omit-expires-in rewrite the token endpoint's successful answers on their
// way out, the way those providers answer.
if (args['no-rotation'] || args['omit-expires-in']) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && ctx.path === '/token' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      const body = { ...ctx.body };
      if (args['omit-expires-in']) delete body.expires_in;
      if (args['no-rotation'] && ctx.oidc?.params?.grant_type === 'refresh_token') delete body.refresh_token;
      ctx.body = body;
    }
  });
}

// Hydra holds one auth method per client and rejects the other; oidc-provider accepts both
// secret methods for either. Enforce the registration on every endpoint that authenticates a
// client. The body is read here and handed on as `req.body`, which oidc-provider then uses.
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && CLIENT_AUTH_PATHS.has(ctx.path)) {
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    ctx.req.body = Buffer.concat(chunks).toString('utf8');
    const form = new URLSearchParams(ctx.req.body);
    let clientId = form.get('client_id');
    let used = form.has('client_secret') ? 'client_secret_post' : 'none';
    const [scheme, encoded] = (ctx.get('authorization') || '').split(' ');
    if (scheme?.toLowerCase() === 'basic' && encoded) {
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const decode = (s) => decodeURIComponent(s.replace(/\+/g, '%20'));
      try {
        clientId = decode(decoded.slice(0, decoded.indexOf(':')));
      } catch {
        clientId = undefined;
      }
      used = 'client_secret_basic';
    }
    const client = CLIENTS.find((c) => c.client_id === clientId);
    if (client && client.token_endpoint_auth_method !== used) {
      const description = `client ${clientId} is registered for ${client.token_endpoint_auth_method}, not ${used}`;
      log(`${ctx.path === '/token' ? 'grant' : ctx.path.slice(7)}.error`, {
        error: 'invalid_client',
        error_description: description,
        client_id: clientId,
      });
      ctx.status = 401;
      ctx.set('cache-control', 'no-store');
      ctx.body = { error: 'invalid_client', error_description: description };
      return;
    }
  }
  await next();
});

// oidc-provider emits no event for a successful revocation: one is logged here, after the
// endpoint has done its work, naming the token it revoked (by fingerprint, as the grant events
// do) and its grant, so that a test can tell which refresh token of a chain was revoked.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && ctx.path === '/token/revocation' && ctx.status === 200) {
    const token = ctx.oidc?.entities?.RefreshToken ?? ctx.oidc?.entities?.AccessToken;
    log('revocation.success', {
      client_id: ctx.oidc?.client?.clientId,
      token_type_hint: ctx.oidc?.params?.token_type_hint,
      kind: token?.kind,
      token: token ? fp(token.jti) : undefined,
      grant_id: token?.grantId,
    });
  }
});

const grantType = (ctx) => ctx.oidc?.params?.grant_type;
const authMethod = (ctx) => (ctx.get('authorization') ? 'client_secret_basic' : 'client_secret_post');

provider.on('grant.success', (ctx) => {
  const { AuthorizationCode: code, RotatedRefreshToken: rotated, RefreshToken: current, AccessToken: at } = ctx.oidc.entities;
  // Without rotation (--no-rotation) a refresh's RefreshToken entity is the token it presented:
  // logged as used, with none issued.
  const kept = grantType(ctx) === 'refresh_token' && !rotated;
  const used = kept ? current : rotated;
  const issued = kept ? undefined : current;
  log('grant.success', {
    grant_type: grantType(ctx),
    client_id: ctx.oidc.client.clientId,
    auth_method: authMethod(ctx),
    grant_id: at?.grantId,
    pkce: code ? Boolean(code.codeChallenge) : undefined,
    // The refresh token this request used (rotated away), and the one it issued.
    refresh_token_used: used ? fp(used.jti) : undefined,
    refresh_token_issued: issued ? fp(issued.jti) : undefined,
    access_token: at ? fp(at.jti) : undefined,
    aud: at?.aud,
    scope: at?.scope,
  });
});
// `error_detail` is oidc-provider's own reason behind a generic description ("grant request is
// invalid"): which check failed. It never goes to the client.
provider.on('grant.error', (ctx, err) => {
  log('grant.error', {
    grant_type: grantType(ctx),
    client_id: ctx.oidc?.client?.clientId,
    error: err.error,
    error_description: err.error_description,
    error_detail: err.error_detail,
  });
});
provider.on('refresh_token.consumed', (token) => log('refresh_token.consumed', { token: fp(token.jti), grant_id: token.grantId }));
provider.on('authorization_code.consumed', (code) => log('authorization_code.consumed', { grant_id: code.grantId }));
provider.on('grant.revoked', (_ctx, grantId) => log('grant.revoked', { grant_id: grantId }));
provider.on('authorization.success', (ctx) => log('authorization.success', { client_id: ctx.oidc.client?.clientId }));
provider.on('authorization.error', (ctx, err) =>
  log('authorization.error', { client_id: ctx.oidc?.client?.clientId, error: err.error, error_description: err.error_description }));
provider.on('revocation.error', (ctx, err) => log('revocation.error', { error: err.error, error_description: err.error_description }));
provider.on('introspection.error', (ctx, err) => log('introspection.error', { error: err.error, error_description: err.error_description }));
provider.on('server_error', (_ctx, err) => log('server_error', { message: String(err?.stack || err) }));

const server = provider.listen(port, args.host, () => {
  log('server.listening', { issuer, access_ttl: accessTtl, code_ttl: codeTtl, state: args.state ?? null });
});
server.on('error', (err) => {
  console.error(`cannot listen on ${args.host}:${port}: ${err.message}`);
  process.exit(1);
});
if (args['exit-with-stdin']) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    log('server.stopping', { signal });
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
