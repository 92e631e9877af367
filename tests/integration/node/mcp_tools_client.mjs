// mcp_tools_client.mjs URL TOKEN TOOL...: the official MCP SDK client over Streamable HTTP
// to URL (airlock's gateway), the token in Authorization: Bearer. Lists the tools, then
// calls each TOOL; prints one JSON line {"tools": [...], "results": {tool: {"ok": bool,
// "text"|"error": ...}}}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, ...tools] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "airlock-test-agent", version: "1.0.0" });
const out = { tools: [], results: {} };
try {
  await client.connect(transport);
  out.tools = (await client.listTools()).tools.map((t) => t.name);
  for (const t of tools) {
    try {
      const r = await client.callTool({ name: t, arguments: { q: "x" } });
      out.results[t] = { ok: !r.isError, text: r.content?.[0]?.text };
    } catch (e) {
      out.results[t] = { ok: false, error: String(e.message || e), code: e.code };
    }
  }
} catch (e) {
  out.connect_error = String(e.message || e);
}
console.log(JSON.stringify(out));
await client.close().catch(() => {});
