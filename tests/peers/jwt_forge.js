// jwt_forge.js: bad (and good) JWT access tokens for airlock's inbound-JWT tests, made
// with the npm `jose` library (pinned in tests/package.json), never by hand.
//
//   node jwt_forge.js ISSUER_KEY.json < spec.json  ->  {"name": "token", ...}
//
// ISSUER_KEY.json is the provider's private signing JWK (oidc_provider.js --key-out).
// spec.json: {"base": {claims...}, "tokens": [{"name": N, "kind": K, "claims": {...},
// "header": {...}}]} where each token's claims are base + its own (a null value removes
// a claim) and kind is one of:
//   issuer    signed RS256 with the issuer's key (its kid), header merged in
//   other     signed RS256 with a fresh key the issuer does not publish; "kid" from header
//   none      alg "none", no signature (jose UnsecuredJWT)
//   hs256pub  HS256 with the issuer's PUBLIC key (its SPKI PEM) as the HMAC secret
//   tamper    an issuer-signed token with one signature character changed
import fs from "node:fs";
import { SignJWT, UnsecuredJWT, importJWK, generateKeyPair, exportSPKI } from "jose";

const jwk = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const spec = JSON.parse(fs.readFileSync(0, "utf8"));
const key = await importJWK(jwk, "RS256");
const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pubJwk } = jwk;
const pubKey = await importJWK(pubJwk, "RS256");
const pem = await exportSPKI(pubKey);
const other = await generateKeyPair("RS256");

function claimsOf(t) {
  const c = { ...spec.base, ...(t.claims || {}) };
  for (const k of Object.keys(c)) if (c[k] === null) delete c[k];
  return c;
}

async function signed(t, k, header) {
  return new SignJWT(claimsOf(t)).setProtectedHeader(header).sign(k);
}

const out = {};
for (const t of spec.tokens) {
  const h = t.header || {};
  if (t.kind === "issuer") {
    out[t.name] = await signed(t, key, { alg: "RS256", kid: jwk.kid, typ: "at+jwt", ...h });
  } else if (t.kind === "other") {
    out[t.name] = await signed(t, other.privateKey, { alg: "RS256", typ: "at+jwt", ...h });
  } else if (t.kind === "none") {
    out[t.name] = new UnsecuredJWT(claimsOf(t)).encode();
  } else if (t.kind === "hs256pub") {
    const secret = new TextEncoder().encode(pem);
    out[t.name] = await signed(t, secret, { alg: "HS256", kid: jwk.kid, ...h });
  } else if (t.kind === "tamper") {
    const good = await signed(t, key, { alg: "RS256", kid: jwk.kid, ...h });
    const i = good.lastIndexOf(".") + 10;
    out[t.name] = good.slice(0, i) + (good[i] === "A" ? "B" : "A") + good.slice(i + 1);
  } else {
    console.error("unknown kind " + t.kind);
    process.exit(2);
  }
}
console.log(JSON.stringify(out));
