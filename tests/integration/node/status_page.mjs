// status_page.mjs URL: loads airlock's status page in Debian's chromium (headless,
// driven by puppeteer-core; JavaScript disabled, as an operator's locked-down browser
// might have it) and prints one JSON line of what a person sees:
//   {ok, title, targets:[[cells]...], providers:[[cells]...], refusals:[[cells]...],
//    text (the whole visible text), html (the page source), requests:[urls fetched],
//    console:[messages], ms}
// CHROMIUM overrides the browser path (default /usr/bin/chromium).
import puppeteer from "puppeteer-core";

const url = process.argv[2];
const t0 = Date.now();
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // no sandbox: CI runs as root in a container; no GPU, /dev/shm may be tiny
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
});
try {
  const page = await browser.newPage();
  await page.setJavaScriptEnabled(false);
  const requests = [];
  const consoleMsgs = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => consoleMsgs.push(m.text()));
  const resp = await page.goto(url, { waitUntil: "load", timeout: 20000 });
  // evaluate() still works with page JavaScript disabled (it is the test's, via CDP)
  const rows = (id) =>
    page.$$eval(`#${id} tr`, (trs) =>
      trs.slice(1).map((tr) => [...tr.querySelectorAll("td")].map((td) => td.innerText.trim())));
  const out = {
    ok: true,
    status: resp.status(),
    csp: resp.headers()["content-security-policy"] || null,
    title: await page.title(),
    targets: await rows("targets"),
    providers: await rows("providers"),
    refusals: await rows("refusals"),
    text: await page.evaluate(() => document.body.innerText),
    html: await page.content(),
    requests,
    console: consoleMsgs,
    ms: Date.now() - t0,
  };
  console.log(JSON.stringify(out));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
