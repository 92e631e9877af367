// proxy_agent_http.mjs URL: one GET of a plain http:// URL with undici's ProxyAgent on
// $HTTP_PROXY. proxyTunnel: false makes undici send the request in absolute form to the
// proxy (a classic forward proxy) instead of opening a CONNECT tunnel for http://.
// The agent's own Authorization, if any, comes from $AGENT_AUTHORIZATION.
// Prints one JSON line {ok, status, received_auth_sha256, body} or {ok:false, error, code}.
import { ProxyAgent, request } from "undici";

const dispatcher = new ProxyAgent({ uri: process.env.HTTP_PROXY, proxyTunnel: false });
const url = process.argv[2];
const headers = {};
if (process.env.AGENT_AUTHORIZATION) headers.authorization = process.env.AGENT_AUTHORIZATION;

try {
  const r = await request(url, { dispatcher, headers, headersTimeout: 15000, bodyTimeout: 15000 });
  const text = await r.body.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  console.log(JSON.stringify({
    ok: true,
    status: r.statusCode,
    received_auth_sha256: r.headers["x-received-authorization-sha256"] ?? null,
    body,
  }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e.message), code: e.code ?? null }));
  process.exitCode = 1;
} finally {
  await dispatcher.close();
}
