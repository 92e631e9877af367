// mcp_tools_server.js: a real MCP server (npm @modelcontextprotocol/sdk, pinned in
// tests/package.json) over Streamable HTTP, stateless, for airlock's MCP policy tests.
//
//   node mcp_tools_server.js [--port 0]   ->  prints "READY <port>"
//
// POST /mcp: the MCP endpoint, tools "search" and "delete" (each returns a text
// content naming itself). GET /__stats: {"calls": {"search": N, "delete": M},
// "requests": R} counted by the server itself, so a test can tell the upstream never
// saw a call airlock refused.
import http from "node:http";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

const args = process.argv.slice(2);
let port = 0;
for (let i = 0; i < args.length; i += 2) if (args[i] === "--port") port = Number(args[i + 1]);

const stats = { calls: { search: 0, delete: 0 }, requests: 0 };

function makeServer() {
  const s = new McpServer({ name: "airlock-test-tools", version: "1.0.0" });
  for (const name of ["search", "delete"]) {
    s.tool(name, `the ${name} tool`, { q: z.string().optional() }, async () => {
      stats.calls[name]++;
      return { content: [{ type: "text", text: `${name} ran` }] };
    });
  }
  return s;
}

const server = http.createServer(async (req, res) => {
  if (req.url === "/__stats") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(stats));
    return;
  }
  stats.requests++;
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString();
  const body = text ? JSON.parse(text) : undefined;
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: true,
  });
  const s = makeServer();
  res.on("close", () => {
    transport.close();
    s.close();
  });
  await s.connect(transport);
  await transport.handleRequest(req, res, body);
});
server.listen(port, "127.0.0.1", () => console.log(`READY ${server.address().port}`));
