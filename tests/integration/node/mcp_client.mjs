// mcp_client.mjs URL: the official MCP SDK client (Streamable HTTP) holding no credential:
// connects to URL (airlock's gateway URL of an mcp_server target), initialises, lists the
// tools, calls "count" with a progress callback, and prints one JSON line:
//   {ok, server, tools, progress: [{progress, ms}], result, result_ms}
// (ms since the call started: progress arriving well before the result shows the SSE
// stream reached the client event by event). $MCP_TEST_BEARER adds an Authorization
// header — only for the peers' self-test without airlock. Exits 1 on failure.
// $MCP_TEST_ACK_URL (the resource server's https://127.0.0.1:PORT/__ack, reached directly
// with $NODE_EXTRA_CA_CERTS, never through airlock): lock-step mode, timing-free — each
// progress is acknowledged there as it arrives and the server sends the next only after
// the ack (or after $MCP_TEST_ACK_TIMEOUT_MS, default 10000); the line then also has
// acks: [HTTP status per ack, 200 = awaited, 409 = late] and lockstep_acked (3 = every
// event reached us before the next was sent, i.e. streamed, not buffered).
import http from "node:http";
import https from "node:https";
import crypto from "node:crypto";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url] = process.argv.slice(2);
const headers = {};
if (process.env.MCP_TEST_BEARER) headers.authorization = "Bearer " + process.env.MCP_TEST_BEARER;
const client = new Client({ name: "airlock-test-client", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
try {
  await client.connect(transport);
  const server = client.getServerVersion();
  const tools = (await client.listTools()).tools.map((t) => t.name);
  const progress = [];
  const ackUrl = process.env.MCP_TEST_ACK_URL;
  const ackId = crypto.randomUUID();
  const ackMs = Number(process.env.MCP_TEST_ACK_TIMEOUT_MS) || 10000;
  const acks = [];
  const ack = (n) =>
    new Promise((resolve) => {
      const u = new URL(ackUrl);
      u.searchParams.set("id", ackId);
      u.searchParams.set("n", String(n));
      const req = (u.protocol === "https:" ? https : http).get(u, (r) => {
        r.resume();
        r.on("end", () => resolve(r.statusCode));
      });
      req.on("error", (e) => resolve(String(e.message)));
    });
  const t0 = Date.now();
  const params = { name: "count", arguments: {} };
  if (ackUrl) params._meta = { "airlock.test/ack": { id: ackId, timeout_ms: ackMs } };
  const result = await client.callTool(params, undefined, {
    onprogress: (p) => {
      progress.push({ progress: p.progress, ms: Date.now() - t0 });
      if (ackUrl) acks.push(ack(p.progress));
    },
    timeout: ackUrl ? ackMs + 20000 : 20000,
  });
  const result_ms = Date.now() - t0;
  const out = { ok: true, server, tools, progress, result: result.content[0].text, result_ms };
  if (ackUrl) {
    out.acks = await Promise.all(acks);
    out.lockstep_acked = result.content[1] ? JSON.parse(result.content[1].text).lockstep_acked : null;
  }
  console.log(JSON.stringify(out));
  await client.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e), code: e && e.code }));
  process.exit(1);
}
