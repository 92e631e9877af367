// fetch_env_proxy.mjs URL [undici|global]: one GET through undici's EnvHttpProxyAgent,
// which reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment (`airlock env`
// sets them; NODE_EXTRA_CA_CERTS, read by Node at start-up, makes airlock's CA trusted).
// "undici" (default) calls undici's fetch; "global" calls Node's built-in fetch, which
// follows the same global dispatcher.
// The agent's own Authorization, if any, comes from $AGENT_AUTHORIZATION (a dummy the
// proxy must replace). Prints one JSON line: {ok, status, received_auth_sha256, body}
// or {ok:false, error, code}; exits 0 on a response (any status), 1 on a failure.
import { EnvHttpProxyAgent, setGlobalDispatcher, fetch } from "undici";

// The README's snippet. proxyTunnel: false sends plain http:// URLs to the proxy as
// forward-proxy requests (undici would otherwise open a CONNECT tunnel for them too);
// https:// URLs always go through CONNECT.
setGlobalDispatcher(new EnvHttpProxyAgent({ proxyTunnel: false }));

const [url, which = "undici"] = process.argv.slice(2);
const doFetch = which === "global" ? globalThis.fetch : fetch;
const headers = {};
if (process.env.AGENT_AUTHORIZATION) headers.authorization = process.env.AGENT_AUTHORIZATION;

try {
  const r = await doFetch(url, { headers, signal: AbortSignal.timeout(15000) });
  const text = await r.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  console.log(JSON.stringify({
    ok: true,
    status: r.status,
    received_auth_sha256: r.headers.get("x-received-authorization-sha256"),
    body,
  }));
} catch (e) {
  // fetch wraps the network error: the TLS reason is in e.cause.
  const cause = e.cause ?? e;
  console.log(JSON.stringify({ ok: false, error: String(cause.message ?? e.message), code: cause.code ?? null }));
  process.exitCode = 1;
}
