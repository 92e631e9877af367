#!/usr/bin/python3
"""aws_fake: an AWS endpoint for airlock's SigV4 tests that checks every signature with
Debian's python3-botocore (an implementation independent of airlock's signer).

    aws_fake.py --port N --keys FILE [--tls-cert C --tls-key K] [--sts-ttl S]
                [--container-token T]

--keys is a JSON file {"ACCESS_KEY_ID": {"secret": "...", "token": "..." or null}}: the
credentials the fake knows (it never prints them). Prints "READY <port>" on stdout.

Every request except the credential endpoints must carry a SigV4 Authorization header.
The fake takes the access key id, date, region and service from its Credential scope and
the header list from SignedHeaders, rebuilds the request from what arrived (method,
raw path and query, exactly those headers, the body) and computes the signature with
botocore's SigV4Auth (S3SigV4Auth for service s3) from the secret it knows. It also
checks that X-Amz-Date is within 5 minutes, that a session token is present, signed
and equal to the known one when the key has one, and that x-amz-content-sha256 (when
sent and not UNSIGNED-PAYLOAD) is the body's hash. Any mismatch: 403 JSON
{"__type": "InvalidSignatureException", "message": ...} and a "MISMATCH" line on stderr.

On success (a "VERIFIED akid service region METHOD path" line on stderr):
  POST /2015-03-31/functions/<arn>/invocations   Lambda Invoke: the function's name
      decides: "*fail*" -> 200 + X-Amz-Function-Error: Unhandled and
      {"errorType": "ValueError", "errorMessage": "boom: <event.x>"}; "*throttle*" ->
      429 + Retry-After: 7 {"Type": "User", "message": "Rate exceeded"}; otherwise
      200 {"echo": <event>, "function": <arn>}
  POST / with Action=AssumeRole (form, service sts)   STS AssumeRole: new temporary
      credentials valid --sts-ttl seconds (registered, so they verify afterwards), XML
  POST / with X-Amz-Target DynamoDB_20120810.ListTables   {"TableNames": ["t1"]}
  GET /2015-03-31/functions/   Lambda ListFunctions: the function "echo"
  anything else   200 JSON {"method", "path", "query", "akid", "region", "service",
      "signed_headers", "body_sha256", "headers": {lower-name: value}}
Unsigned endpoints (credential sources, for airlock's own fetches):
  POST / with Action=AssumeRoleWithWebIdentity   STS: requires WebIdentityToken
  GET /creds/container   container endpoint: requires Authorization == --container-token
  PUT /latest/api/token  IMDSv2 token (needs X-aws-ec2-metadata-token-ttl-seconds)
  GET /latest/meta-data/iam/security-credentials/[role]   needs the IMDSv2 token, else 401
  GET /_stats   counts per action (JSON)
Credentials handed out by container/IMDS/web identity are the first key of --keys that
has a token (fixed), with Expiration now + --sts-ttl.
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peerserver import PeerServer, tls_context  # noqa: E402

from botocore.auth import S3SigV4Auth, SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402

KEYS = {}
LOCK = threading.Lock()
STATS = {}
ARGS = None
IMDS_TOKENS = set()


def count(what):
    with LOCK:
        STATS[what] = STATS.get(what, 0) + 1


def iso(t):
    return datetime.datetime.utcfromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def issue(prefix):
    """New temporary credentials, registered so that they verify."""
    akid = "ASIA" + prefix + uuid.uuid4().hex[:12].upper()
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    token = "FQoG" + uuid.uuid4().hex + uuid.uuid4().hex
    with LOCK:
        KEYS[akid] = {"secret": secret, "token": token}
    return akid, secret, token


def fixed_temporary():
    for akid, k in KEYS.items():
        if k.get("token"):
            return akid, k["secret"], k["token"]
    raise RuntimeError("--keys holds no key with a token")


class Server(PeerServer):
    peer_name = "aws-fake"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aws-fake/1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, ctype="application/json", headers=()):
        data = body if isinstance(body, bytes) else (
            json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # ---- signature check -------------------------------------------------------
    def verify(self, body):
        """Returns (akid, region, service, signed) or raises ValueError(why)."""
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            raise ValueError("no SigV4 Authorization header")
        parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        akid, date, region, service, term = parts["Credential"].split("/")
        if term != "aws4_request":
            raise ValueError("bad credential scope")
        with LOCK:
            key = KEYS.get(akid)
        if key is None:
            raise ValueError("unknown access key id %s" % akid)
        signed = parts["SignedHeaders"].split(";")
        if "host" not in signed:
            raise ValueError("host is not signed")
        amz_date = self.headers.get("X-Amz-Date") or ""
        t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
        if abs((datetime.datetime.utcnow() - t).total_seconds()) > 300:
            raise ValueError("X-Amz-Date too far from now")
        if not amz_date.startswith(date):
            raise ValueError("scope date differs from X-Amz-Date")
        token = self.headers.get("X-Amz-Security-Token")
        if key.get("token"):
            if token != key["token"]:
                raise ValueError("session token missing or wrong")
            if "x-amz-security-token" not in signed:
                raise ValueError("session token not signed")
        elif token is not None:
            raise ValueError("a session token for long-term credentials")
        csha = self.headers.get("X-Amz-Content-SHA256")
        if csha and csha != "UNSIGNED-PAYLOAD" and csha != hashlib.sha256(body).hexdigest():
            raise ValueError("x-amz-content-sha256 is not the body's hash")
        headers = {}
        for name in signed:
            vals = self.headers.get_all(name)
            if vals is None:
                raise ValueError("signed header %s did not arrive" % name)
            headers[name] = ",".join(vals)
        scheme = "https" if ARGS.tls_cert else "http"
        req = AWSRequest(method=self.command, url="%s://%s%s" % (scheme, headers["host"], self.path),
                         headers=headers, data=body)
        req.context["timestamp"] = amz_date
        creds = Credentials(akid, key["secret"], key.get("token"))
        signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(creds, service, region)
        cr = signer.canonical_request(req)
        sig = signer.signature(signer.string_to_sign(req, cr), req)
        if sig != parts["Signature"]:
            raise ValueError("signature mismatch; canonical request was:\n" + cr)
        return akid, region, service, signed

    # ---- dispatch ----------------------------------------------------------------
    def handle_any(self):
        body = self.body()
        path = urlsplit(self.path).path
        # Every header line, for the tests' "placeholder never reached upstream" checks.
        sys.stderr.write("REQUEST %s %s %s\n" % (self.command, self.path,
                                                 json.dumps(dict(self.headers.items()))))
        form = {}
        if (self.headers.get("Content-Type") or "").startswith("application/x-www-form-urlencoded"):
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if self.command == "GET" and path == "/_stats":
            with LOCK:
                return self.reply(200, dict(STATS))
        if self.command == "POST" and form.get("Action") == "AssumeRoleWithWebIdentity":
            count("AssumeRoleWithWebIdentity")
            if not form.get("WebIdentityToken") or not form.get("RoleArn"):
                return self.reply(400, "<ErrorResponse><Error><Code>InvalidParameter</Code>"
                                  "</Error></ErrorResponse>", "text/xml")
            return self.sts_answer("AssumeRoleWithWebIdentity", *fixed_temporary())
        if self.command == "GET" and path == "/creds/container":
            count("container")
            if self.headers.get("Authorization") != ARGS.container_token:
                return self.reply(401, {"message": "bad authorization token"})
            akid, secret, token = fixed_temporary()
            return self.reply(200, {"AccessKeyId": akid, "SecretAccessKey": secret,
                                    "Token": token,
                                    "Expiration": iso(datetime.datetime.utcnow().timestamp()
                                                      + ARGS.sts_ttl)})
        if self.command == "PUT" and path == "/latest/api/token":
            count("imds_token")
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self.reply(400, "missing ttl", "text/plain")
            tok = uuid.uuid4().hex
            IMDS_TOKENS.add(tok)
            return self.reply(200, tok, "text/plain")
        if path.startswith("/latest/meta-data/"):
            count("imds_get")
            if self.headers.get("X-aws-ec2-metadata-token") not in IMDS_TOKENS:
                count("imds_get_refused")
                return self.reply(401, "", "text/plain")
            if path == "/latest/meta-data/iam/security-credentials/":
                return self.reply(200, "test-role", "text/plain")
            if path == "/latest/meta-data/iam/security-credentials/test-role":
                akid, secret, token = fixed_temporary()
                return self.reply(200, {"Code": "Success", "AccessKeyId": akid,
                                        "SecretAccessKey": secret, "Token": token,
                                        "Expiration": iso(datetime.datetime.utcnow().timestamp()
                                                          + ARGS.sts_ttl)})
            return self.reply(404, "", "text/plain")
        try:
            akid, region, service, signed = self.verify(body)
        except (ValueError, KeyError) as e:
            count("mismatch")
            sys.stderr.write("MISMATCH %s %s: %s\n" % (self.command, self.path, e))
            return self.reply(403, {"__type": "InvalidSignatureException",
                                    "message": "signature check failed: %s" % str(e).split("\n")[0]})
        count("verified")
        sys.stderr.write("VERIFIED %s %s %s %s %s\n" % (akid, service, region, self.command,
                                                         self.path))
        if self.command == "POST" and form.get("Action") == "AssumeRole":
            count("AssumeRole")
            return self.sts_answer("AssumeRole", *issue("ROLE"))
        target = self.headers.get("X-Amz-Target") or ""
        if self.command == "GET" and path == "/2015-03-31/functions/":
            return self.reply(200, {"Functions": [{"FunctionName": "echo", "FunctionArn":
                                                   "arn:aws:lambda:us-east-1:123456789012:function:echo"}]})
        if target == "DynamoDB_20120810.ListTables":
            return self.reply(200, {"TableNames": ["t1"]}, "application/x-amz-json-1.0")
        if (self.command == "POST" and path.startswith("/2015-03-31/functions/")
                and path.endswith("/invocations")):
            return self.lambda_invoke(unquote(path[len("/2015-03-31/functions/"):-len("/invocations")]),
                                      body)
        return self.reply(200, {"method": self.command, "path": path,
                                "query": urlsplit(self.path).query, "akid": akid,
                                "region": region, "service": service,
                                "signed_headers": signed,
                                "body_sha256": hashlib.sha256(body).hexdigest(),
                                "headers": {k.lower(): v for k, v in self.headers.items()}})

    def sts_answer(self, action, akid, secret, token):
        exp = iso(datetime.datetime.utcnow().timestamp() + ARGS.sts_ttl)
        xml = ("<{a}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{a}Result>"
               "<Credentials><AccessKeyId>{k}</AccessKeyId><SecretAccessKey>{s}</SecretAccessKey>"
               "<SessionToken>{t}</SessionToken><Expiration>{e}</Expiration></Credentials>"
               "</{a}Result></{a}Response>").format(a=action, k=akid, s=secret, t=token, e=exp)
        return self.reply(200, xml, "text/xml")

    def lambda_invoke(self, arn, body):
        name = arn.split(":function:")[-1]
        count("invoke")
        try:
            event = json.loads(body or b"null")
        except ValueError:
            event = body.decode("utf-8", "replace")
        if "throttle" in name:
            return self.reply(429, {"Type": "User", "message": "Rate exceeded"},
                              headers=[("Retry-After", "7"), ("x-amzn-ErrorType",
                                                              "TooManyRequestsException")])
        if "fail" in name:
            x = event.get("x") if isinstance(event, dict) else None
            return self.reply(200, {"errorType": "ValueError", "errorMessage": "boom: %s" % x,
                                    "stackTrace": ["  File \"/var/task/f.py\", line 3"]},
                              headers=[("X-Amz-Function-Error", "Unhandled"),
                                       ("X-Amz-Executed-Version", "$LATEST")])
        return self.reply(200, {"echo": event, "function": arn},
                          headers=[("X-Amz-Executed-Version", "$LATEST")])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any


def main():
    global ARGS
    ap = argparse.ArgumentParser(description="AWS fake with botocore signature checks")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--keys", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--sts-ttl", type=int, default=3600)
    ap.add_argument("--container-token", default="Bearer container-token")
    ARGS = ap.parse_args()
    with open(ARGS.keys) as f:
        KEYS.update(json.load(f))
    srv = Server((ARGS.host, ARGS.port), Handler)
    if ARGS.tls_cert:
        srv.ssl_ctx = tls_context(ARGS.tls_cert, ARGS.tls_key)
    print("READY %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
