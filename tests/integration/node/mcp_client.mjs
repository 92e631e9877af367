// mcp_client.mjs URL: the official MCP SDK client (Streamable HTTP) holding no credential:
// connects to URL (airlock's gateway URL of an mcp_server target), initialises, lists the
// tools, calls "count" with a progress callback, and prints one JSON line:
//   {ok, server, tools, progress: [{progress, ms}], result, result_ms}
// (ms since the call started: progress arriving well before the result shows the SSE
// stream reached the client event by event). $MCP_TEST_BEARER adds an Authorization
// header — only for the peers' self-test without airlock. Exits 1 on failure.
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
  const t0 = Date.now();
  const result = await client.callTool({ name: "count", arguments: {} }, undefined, {
    onprogress: (p) => progress.push({ progress: p.progress, ms: Date.now() - t0 }),
    timeout: 20000,
  });
  const result_ms = Date.now() - t0;
  console.log(JSON.stringify({ ok: true, server, tools, progress, result: result.content[0].text, result_ms }));
  await client.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message ? e.message : e), code: e && e.code }));
  process.exit(1);
}
