// resource_server.js: an OAuth-protected upstream for airlock's 2LO tests — a JSON API
// and an MCP server (official @modelcontextprotocol/sdk, Streamable HTTP) that accept a
// request only with a Bearer JWT the OpenID provider signed (checked with `jose` against
// the provider's JWKS: signature, issuer, audience, expiry), like a real resource server.
//
//   node resource_server.js --issuer URL --jwks URL --audience AUD [--mcp-audience AUD]
//        [--cert PEM --key PEM] [--port 0]
//   NODE_EXTRA_CA_CERTS=test-ca.pem so the JWKS fetch trusts the test CA.
//
// - /api/as403/... answers a refused token with 403 (+ the same WWW-Authenticate);
// - /api/...   any method: 200 {"ok":true,"method","path","jti","sub","scope","aud",
//              "body_sha256","body_len","x_airlock_user"} with a valid token (sub: whose
//              token it is; x_airlock_user: that header if it arrived, else null); else 401 with
//              WWW-Authenticate: Bearer error="invalid_token" and a JSON error;
// - /mcp       MCP Streamable HTTP (stateless: one server per request). Tool "count" sends
//              three progress notifications, 50 ms apart, then its result, all as
//              server-sent events on the POST's response stream. Lock-step mode (opt-in,
//              the call's _meta["airlock.test/ack"] = {id, timeout_ms}): progress i+1 and the
//              result are sent only after the client acknowledged progress i on
//              GET /__ack?id=ID&n=I (direct, not through airlock); without an ack within
//              timeout_ms the rest is sent at once. The result's second text item is
//              {"lockstep_acked": N} (3: every event reached the client before the next was
//              sent — streamed, not buffered);
// - GET  /__ack?id=&n= 200 for the awaited ack, else 409 (late: the peer stopped waiting);
// - POST /__revoke     every token seen so far is rejected from now on (by jti);
// - GET  /__stats      {"requests","accepted","rejected","jtis":[distinct jti seen, in order],
//                      "tokens":[the raw tokens, same order: for "never logged" checks]}.
// --mcp-audience self: the audience /mcp wants is https://127.0.0.1:<its port>/mcp (what an
// MCP client sends as RFC 8707 resource for that URL).
// Prints "READY <port>" when listening.
import http from "node:http";
import https from "node:https";
import fs from "node:fs";
import crypto from "node:crypto";
import { createRemoteJWKSet, jwtVerify } from "jose";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";

const args = process.argv.slice(2);
const opt = { port: 0 };
for (let i = 0; i < args.length; i += 2) {
  const k = args[i].replace(/^--/, "").replace(/-([a-z])/g, (_, c) => c.toUpperCase());
  opt[k] = args[i + 1];
}
for (const need of ["issuer", "jwks", "audience"]) {
  if (!opt[need]) {
    console.error(`resource_server.js: --${need} is required`);
    process.exit(2);
  }
}

const JWKS = createRemoteJWKSet(new URL(opt.jwks));
const revoked = new Set();
const stats = { requests: 0, accepted: 0, rejected: 0, jtis: [], tokens: [] };
const lockstep = new Map(); // ack id -> { want: n, done() } while "count" waits for ack n

// Registered before progress n is sent (the ack may beat sendNotification's return);
// resolves true on the ack, false after ms.
function awaitAck(id, n, ms) {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      lockstep.delete(id);
      resolve(false);
    }, ms);
    lockstep.set(id, {
      want: n,
      done: () => {
        clearTimeout(t);
        lockstep.delete(id);
        resolve(true);
      },
    });
  });
}

async function authenticate(req, audience) {
  const h = req.headers.authorization || "";
  const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(h);
  if (!m) return { error: "no bearer token" };
  try {
    const { payload } = await jwtVerify(m[1], JWKS, { issuer: opt.issuer, audience });
    if (revoked.has(payload.jti)) return { error: "token revoked" };
    if (!stats.jtis.includes(payload.jti)) {
      stats.jtis.push(payload.jti);
      stats.tokens.push(m[1]); // for the tests' "never in a log" greps
    }
    return { payload };
  } catch (e) {
    return { error: "token rejected: " + e.code + (e.claim ? " (" + e.claim + ", want " + audience + ")" : "") };
  }
}

function send(res, status, obj, extra = {}) {
  res.writeHead(status, { "content-type": "application/json", ...extra });
  res.end(JSON.stringify(obj));
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
}

function mcpServer() {
  const server = new McpServer({ name: "airlock-test-mcp", version: "1.0.0" });
  server.registerTool(
    "count",
    { description: "counts to three, streaming progress" },
    async (extra) => {
      const token = extra._meta?.progressToken;
      const ls = extra._meta?.["airlock.test/ack"];
      let acked = ls && token !== undefined ? 0 : -1; // -1: not lock-step; stays put once held back
      for (let i = 1; i <= 3; i++) {
        if (token !== undefined) {
          const ack = acked === i - 1 ? awaitAck(String(ls.id), i, Math.min(Number(ls.timeout_ms) || 10000, 60000)) : null;
          await extra.sendNotification({
            method: "notifications/progress",
            params: { progressToken: token, progress: i, total: 3 },
          });
          if (ack && (await ack)) acked = i;
        }
        if (acked < 0) await new Promise((r) => setTimeout(r, 50));
      }
      const content = [{ type: "text", text: "counted to 3" }];
      if (acked >= 0) content.push({ type: "text", text: JSON.stringify({ lockstep_acked: acked }) });
      return { content };
    },
  );
  return server;
}

async function handle(req, res) {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/__stats") return send(res, 200, stats);
  if (url.pathname === "/__ack") {
    const w = lockstep.get(url.searchParams.get("id") || "");
    if (!w || String(w.want) !== url.searchParams.get("n")) {
      return send(res, 409, { error: "lockstep_timeout", message: "no such ack awaited: the tool stopped waiting" });
    }
    w.done();
    return send(res, 200, { acked: Number(url.searchParams.get("n")) });
  }
  if (url.pathname === "/__revoke" && req.method === "POST") {
    for (const j of stats.jtis) revoked.add(j);
    return send(res, 200, { revoked: revoked.size });
  }
  stats.requests++;
  const isMcp = url.pathname === "/mcp" || url.pathname === "/mcp/";
  const mcpAud = opt.mcpAudience === "self" ? `https://127.0.0.1:${server.address().port}/mcp` : opt.mcpAudience;
  const auth = await authenticate(req, isMcp ? mcpAud || opt.audience : opt.audience);
  if (auth.error) {
    stats.rejected++;
    await readBody(req);
    // /api/as403/...: the same refusal as a 403 (some servers answer so; RFC 6750 allows it)
    const st = url.pathname.startsWith("/api/as403/") ? 403 : 401;
    return send(res, st, { error: "invalid_token", message: auth.error }, {
      "www-authenticate": 'Bearer error="invalid_token"',
    });
  }
  stats.accepted++;
  if (isMcp) {
    const body = await readBody(req);
    const parsed = body.length ? JSON.parse(body.toString()) : undefined;
    const server = mcpServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on("close", () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, parsed);
    return;
  }
  const body = await readBody(req);
  const p = auth.payload;
  return send(res, 200, {
    ok: true,
    method: req.method,
    path: url.pathname,
    jti: p.jti,
    sub: p.sub,
    scope: p.scope || "",
    x_airlock_user: req.headers["x-airlock-user"] || null,
    aud: p.aud,
    body_len: body.length,
    body_sha256: crypto.createHash("sha256").update(body).digest("hex"),
  });
}

const onRequest = (req, res) =>
  handle(req, res).catch((e) => {
    console.error("resource_server error", e);
    if (!res.headersSent) send(res, 500, { error: "internal", message: String(e) });
    else res.destroy();
  });
const server = opt.cert
  ? https.createServer({ cert: fs.readFileSync(opt.cert), key: fs.readFileSync(opt.key) }, onRequest)
  : http.createServer(onRequest);
server.listen(Number(opt.port), "127.0.0.1", () => {
  console.log(`READY ${server.address().port}`);
});
