// oidc_provider.js: a real OpenID Connect / OAuth 2.0 provider (npm `oidc-provider`,
// pinned in tests/package.json) for airlock's OAuth tests. No mocked token endpoint:
// the tokens, discovery document, JWKS and error answers are the library's own.
//
//   node oidc_provider.js --cert server.pem --key server.key [--port 0] [--ttl 300]
//        [--client ID:SECRET[:AUTH_METHOD]]... [--resource URL]... [--key-out FILE]
//        [--user-client ID:SECRET:REDIRECT_URI]... [--par-client ID:SECRET:REDIRECT_URI]...
//        [--require-par]
//
// - HTTPS on 127.0.0.1 (the test CA's server certificate; the issuer is
//   https://127.0.0.1:PORT, so discovery lives at ISSUER/.well-known/openid-configuration);
// - confidential clients allowed `client_credentials` only (default client
//   "airlock-test" / secret from $OIDC_CLIENT_SECRET, client_secret_basic; ":post" as
//   AUTH_METHOD selects client_secret_post), scopes "read write";
// - resource indicators (RFC 8707) with accessTokenFormat 'jwt', so access tokens are
//   RS256 JWTs signed by a key generated at start (published in the JWKS); a token
//   request without `resource` gets the first --resource (or none: opaque token);
// - access-token lifetime --ttl seconds, changeable at run time (POST /__control);
// - GET /__stats -> {"token_requests": N, "token_errors": M, "ttl": S, "last_params": {...}}
//   counts POSTs to the token endpoint as they arrive (at the provider, not in airlock);
//   last_params lists the form parameter NAMES and the non-secret values (resource,
//   scope, audience, grant_type) of the last token request, and how the client
//   authenticated ("basic" or "post");
// - POST /__control {"ttl": S, "delay_ms": D, "fail": "invalid_client"|null} changes the
//   TTL, delays every token answer by D ms, or forces an error answer (a real
//   oidc-provider error made by sending the request on with a wrong secret is not
//   needed: wrong secrets are tested with a real wrong secret).
// - GET /__stats also counts GETs of the JWKS (jwks_requests), for tests of airlock
//   re-fetching keys on an unknown kid;
// - --key-out FILE writes the private signing JWK (mode 0600) so inbound-JWT tests can
//   forge tokens with the issuer's real key (expired, wrong audience, ...) using jose.
// - --user-client adds a confidential client for OAuth on behalf of a user (3LO):
//   authorization_code with PKCE S256 (required) and refresh_token, scopes
//   "openid offline_access read write", redirect URI REDIRECT_URI; refresh tokens are
//   rotated on every use (rotateRefreshToken), so a test sees rotation; with any such
//   client the library's development interactions are on: its login page accepts any
//   login name and password (the account id is the login name), then a consent page
//   (offline_access is only granted with prompt=consent). Authorization codes and
//   refresh tokens are counted in /__stats (code_grants, refresh_grants).
// - --par-client adds the same kind of client, but one that must push its authorization
//   requests first (RFC 9126, require_pushed_authorization_requests: only this client's
//   metadata says so, discovery does not); --require-par makes PAR required for every
//   client and says so in discovery. /__stats counts par_requests (POSTs to the PAR
//   endpoint), authorizations (GET /auth with request_uri: authz_par, without:
//   authz_plain) and revocations (POSTs to the revocation endpoint, RFC 7009, answered
//   200).
// - GET /__stats also lists secrets_seen: every authorization code, PKCE code_verifier
//   and refresh token a token request carried, and every access, refresh and ID token
//   the token endpoint answered — for the tests' "never in a log or response" greps
//   (test-only peer: a real provider never publishes these);
// - GET /__active_refresh_tokens?account=ID -> {"active": N}: how many refresh tokens
//   issued to that account the provider still honours (its own store: not revoked, not
//   consumed by a rotation, not expired), never a token.
// Prints "READY <port> <issuer>" when listening.
import https from "node:https";
import fs from "node:fs";
import { generateKeyPair, exportJWK } from "jose";
import Provider from "oidc-provider";

const args = process.argv.slice(2);
const opt = { port: 0, ttl: 300, clients: [], resources: [], userClients: [], parClients: [] };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  const v = args[i + 1];
  if (a === "--cert") opt.cert = v;
  else if (a === "--key") opt.key = v;
  else if (a === "--port") opt.port = Number(v);
  else if (a === "--ttl") opt.ttl = Number(v);
  else if (a === "--client") opt.clients.push(v);
  else if (a === "--resource") opt.resources.push(v);
  else if (a === "--user-client") opt.userClients.push(v);
  else if (a === "--par-client") opt.parClients.push(v);
  else if (a === "--require-par") {
    opt.requirePar = true;
    i--; // a switch: no value
  }
  else if (a === "--key-out") opt.keyOut = v;
  else {
    console.error("unknown argument " + a);
    process.exit(2);
  }
  i++;
}
if (!opt.cert || !opt.key) {
  console.error("usage: oidc_provider.js --cert PEM --key PEM [--port N] [--ttl S]");
  process.exit(2);
}
if (opt.clients.length === 0) {
  opt.clients.push("airlock-test:" + (process.env.OIDC_CLIENT_SECRET || "airlock-test-secret"));
}

const stats = {
  token_requests: 0,
  token_errors: 0,
  jwks_requests: 0,
  ttl: opt.ttl,
  delay_ms: 0,
  last_params: null,
  code_grants: 0,
  refresh_grants: 0,
  par_requests: 0,
  authz_par: 0,
  authz_plain: 0,
  revocations: 0,
  secrets_seen: [],
};
// refresh token ids issued, per account (for /__active_refresh_tokens)
const refreshByAccount = new Map();
let forcedError = null;

const { privateKey } = await generateKeyPair("RS256", { extractable: true });
const jwk = await exportJWK(privateKey);
jwk.kid = "test-" + Date.now().toString(36);
jwk.alg = "RS256";
jwk.use = "sig";
if (opt.keyOut) fs.writeFileSync(opt.keyOut, JSON.stringify(jwk), { mode: 0o600 });

const server = https.createServer({
  cert: fs.readFileSync(opt.cert),
  key: fs.readFileSync(opt.key),
});
await new Promise((resolve) => server.listen(opt.port, "127.0.0.1", resolve));
const port = server.address().port;
const issuer = `https://127.0.0.1:${port}`;

const clients = opt.clients.map((spec) => {
  const [id, secret, method] = spec.split(":");
  return {
    client_id: id,
    client_secret: secret,
    grant_types: ["client_credentials"],
    redirect_uris: [],
    response_types: [],
    scope: "read write",
    token_endpoint_auth_method: method === "post" ? "client_secret_post" : "client_secret_basic",
  };
});

const userClientSpecs = opt.userClients
  .map((spec) => [spec, false])
  .concat(opt.parClients.map((spec) => [spec, true]));
for (const [spec, par] of userClientSpecs) {
  // ID:SECRET:REDIRECT_URI (the URI itself contains ':')
  const i = spec.indexOf(":");
  const j = spec.indexOf(":", i + 1);
  clients.push({
    client_id: spec.slice(0, i),
    client_secret: spec.slice(i + 1, j),
    grant_types: ["authorization_code", "refresh_token"],
    redirect_uris: [spec.slice(j + 1)],
    response_types: ["code"],
    scope: "openid offline_access read write",
    token_endpoint_auth_method: "client_secret_basic",
    require_pushed_authorization_requests: par,
  });
}

const provider = new Provider(issuer, {
  clients,
  findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  pkce: { required: () => true },
  rotateRefreshToken: true,
  jwks: { keys: [jwk] },
  scopes: ["openid", "offline_access", "read", "write"],
  features: {
    devInteractions: { enabled: userClientSpecs.length > 0 },
    pushedAuthorizationRequests: {
      enabled: true,
      requirePushedAuthorizationRequests: !!opt.requirePar,
    },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf || opt.resources[0],
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => ({
        scope: "read write",
        audience: resource,
        accessTokenTTL: stats.ttl,
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  ttl: {
    ClientCredentials: () => stats.ttl,
    AccessToken: () => stats.ttl,
    RefreshToken: () => 24 * 3600,
    Grant: () => 24 * 3600,
  },
});
provider.proxy = false;

provider.on("grant.error", () => {
  stats.token_errors++;
});
provider.on("server_error", (_ctx, err) => console.error("server_error", err));
provider.on("refresh_token.saved", (token) => {
  if (!refreshByAccount.has(token.accountId)) refreshByAccount.set(token.accountId, new Set());
  refreshByAccount.get(token.accountId).add(token.jti);
});

// Counts and records token requests before the library handles them; the test's own
// control endpoints live beside it.
provider.use(async (ctx, next) => {
  if (ctx.path === "/__stats" && ctx.method === "GET") {
    ctx.type = "application/json";
    ctx.body = JSON.stringify(stats);
    return;
  }
  if (ctx.path === "/__control" && ctx.method === "POST") {
    const chunks = [];
    for await (const c of ctx.req) chunks.push(c);
    const body = JSON.parse(Buffer.concat(chunks).toString() || "{}");
    if (typeof body.ttl === "number") stats.ttl = body.ttl;
    if (typeof body.delay_ms === "number") stats.delay_ms = body.delay_ms;
    if ("fail" in body) forcedError = body.fail;
    ctx.type = "application/json";
    ctx.body = JSON.stringify(stats);
    return;
  }
  if (ctx.path === "/__active_refresh_tokens" && ctx.method === "GET") {
    let active = 0;
    for (const jti of refreshByAccount.get(ctx.query.account) || []) {
      const t = await provider.RefreshToken.find(jti);
      if (t && !t.isExpired && !t.consumed) active++;
    }
    ctx.type = "application/json";
    ctx.body = JSON.stringify({ active });
    return;
  }
  if (ctx.path === "/jwks" && ctx.method === "GET") stats.jwks_requests++;
  if (ctx.path === "/request" && ctx.method === "POST") stats.par_requests++;
  if (ctx.path === "/auth" && ctx.method === "GET") {
    if (ctx.query.request_uri) stats.authz_par++;
    else stats.authz_plain++;
  }
  if (ctx.path === "/token" && ctx.method === "POST") {
    stats.token_requests++;
    if (stats.delay_ms > 0) await new Promise((r) => setTimeout(r, stats.delay_ms));
    if (forcedError) {
      stats.token_errors++;
      ctx.status = 400;
      ctx.type = "application/json";
      ctx.body = JSON.stringify({ error: forcedError, error_description: "forced by the test" });
      return;
    }
  }
  await next();
  if (ctx.path === "/token/revocation" && ctx.method === "POST" && ctx.status === 200)
    stats.revocations++;
  if (ctx.path === "/token" && ctx.method === "POST" && ctx.oidc && ctx.oidc.params) {
    // What the library parsed: parameter names, and the values that are not secrets.
    const p = ctx.oidc.params;
    if (ctx.status === 200 && p.grant_type === "authorization_code") stats.code_grants++;
    if (ctx.status === 200 && p.grant_type === "refresh_token") stats.refresh_grants++;
    const params = {
      names: Object.keys(p).filter((k) => p[k] !== undefined).sort(),
      auth: ctx.get("authorization") ? "basic" : "post",
    };
    for (const k of ["grant_type", "scope", "resource", "audience"]) {
      if (p[k] !== undefined) params[k] = Array.isArray(p[k]) ? p[k].join(" ") : p[k];
    }
    stats.last_params = params;
    for (const k of ["code", "code_verifier", "refresh_token"])
      if (typeof p[k] === "string" && p[k]) stats.secrets_seen.push(p[k]);
    const b = typeof ctx.body === "string" ? null : ctx.body;
    for (const k of ["access_token", "refresh_token", "id_token"])
      if (b && typeof b[k] === "string") stats.secrets_seen.push(b[k]);
  }
});

server.on("request", provider.callback());
console.log(`READY ${port} ${issuer}`);
