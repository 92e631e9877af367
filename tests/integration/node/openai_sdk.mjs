// openai_sdk.mjs MODE BASE_URL [options|global]: the official openai SDK (v5) pointed at
// BASE_URL through the proxy from the environment. v5 calls fetch and passes
// `fetchOptions` to it, so undici's EnvHttpProxyAgent goes in as the dispatcher
// ("options", the default; v4 took `httpAgent` instead). With "global" the client gets
// no proxy option at all: setGlobalDispatcher routes Node's built-in fetch, which the
// SDK uses, through the proxy.
// The SDK refuses to start without an API key: "unused" is a placeholder that airlock
// replaces with the real key.
//   MODE chat    chat.completions.create            -> {ok, content, received_auth_sha256, ...}
//   MODE stream  chat.completions.create stream:true -> {ok, chunks, content, acks, ...}
//                With FAKE_OPENAI_ACK_CA=FILE (the CA of fake_openai's TLS certificate) each
//                chunk is acknowledged, in the loop, straight to the upstream (node:https or
//                node:http, never the proxy) at BASE_URL's origin /_lockstep/ack: fake_openai
//                in lock-step mode sends the next chunk only after that ack.
//   MODE models  models.list                        -> {ok, ids}
// Prints one JSON line; on failure {ok:false, error, status, code} and exit 1.
import OpenAI from "openai";
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

const [mode, baseURL, how = "options"] = process.argv.slice(2);
const opts = {
  apiKey: "unused", // airlock injects the real key
  baseURL,
  maxRetries: 0, // a failure must show, not be retried away
  timeout: 15000,
};
if (how === "global") setGlobalDispatcher(new EnvHttpProxyAgent());
else opts.fetchOptions = { dispatcher: new EnvHttpProxyAgent() };
const client = new OpenAI(opts);
const messages = [{ role: "user", content: "Say hello." }];
const ackCA = process.env.FAKE_OPENAI_ACK_CA ? readFileSync(process.env.FAKE_OPENAI_ACK_CA) : null;

// GET /_lockstep/ack?id=ID&n=N on the upstream itself (agent: false, no proxy); resolves
// with the upstream's count of acked chunks, throws on anything but 200 (with the code of
// the upstream's error: lockstep_timeout when the upstream gave up waiting).
function ack(id, n) {
  const url = new URL("/_lockstep/ack?" + new URLSearchParams({ id, n: String(n) }), baseURL);
  return new Promise((resolve, reject) => {
    const get = url.protocol === "https:" ? https.get : http.get;
    const req = get(url, { ca: ackCA, agent: false, timeout: 10000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        if (res.statusCode === 200) return resolve(JSON.parse(body).acked);
        // fake_openai's OpenAI-shaped error: its code (lockstep_timeout) is what the test reads
        const e = new Error(`ack of chunk ${n} got ${res.statusCode}: ${body}`);
        try {
          e.code = JSON.parse(body).error.code ?? undefined;
        } catch {}
        reject(e);
      });
    });
    req.on("timeout", () => req.destroy(new Error(`ack of chunk ${n} timed out`)));
    req.on("error", reject);
  });
}

async function run() {
  if (mode === "chat") {
    const { data, response } = await client.chat.completions
      .create({ model: "gpt-4o-mini", messages })
      .withResponse();
    return {
      object: data.object,
      content: data.choices[0].message.content,
      finish_reason: data.choices[0].finish_reason,
      usage: data.usage,
      received_auth_sha256: data.received_authorization_sha256,
      header_auth_sha256: response.headers.get("x-received-authorization-sha256"),
    };
  }
  if (mode === "stream") {
    const t0 = performance.now();
    // A buffering proxy sends the headers only when the upstream gave up waiting for an
    // ack (up to 20 s): the SDK must still be waiting then, to report the upstream's error.
    const stream = await client.chat.completions.create(
      { model: "gpt-4o-mini", messages, stream: true },
      { timeout: 40000 },
    );
    const out = { chunks: 0, content: "", times_ms: [], objects: [], finish_reason: null, received_auth_sha256: null,
                  acks: 0, lockstep_acked: null };
    for await (const chunk of stream) {
      if (ackCA) out.acks = await ack(chunk.id, out.chunks);
      out.chunks++;
      out.times_ms.push(Math.round(performance.now() - t0));
      out.objects.push(chunk.object);
      const c = chunk.choices[0];
      out.content += c.delta?.content ?? "";
      if (c.finish_reason) out.finish_reason = c.finish_reason;
      if (chunk.received_authorization_sha256) out.received_auth_sha256 = chunk.received_authorization_sha256;
      if (chunk.lockstep_acked !== undefined) out.lockstep_acked = chunk.lockstep_acked;
    }
    out.objects = [...new Set(out.objects)];
    return out;
  }
  if (mode === "models") {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    return { ids };
  }
  throw new Error("unknown mode " + mode);
}

try {
  console.log(JSON.stringify({ ok: true, ...(await run()) }));
} catch (e) {
  // APIConnectionError wraps fetch's TypeError, which wraps the network/TLS error.
  let root = e;
  while (root.cause && root.code === undefined) root = root.cause;
  console.log(JSON.stringify({
    ok: false,
    error: String(e.message),
    cause: root === e ? null : String(root.message),
    status: e.status ?? null,
    code: root.code ?? null,
  }));
  process.exitCode = 1;
}
