#!/usr/bin/env python3
"""Plays the cloud's hypervisor for Ferry's end-to-end cloud test, in front of moto's EC2 server.

moto (scripts/moto/start.sh) keeps EC2's books: instances, tags, states, user data. It never boots anything, never
runs out of capacity and never reclaims a spot machine. This harness adds those parts, so that a Rust test can see
what Ferry's server asked the "cloud" for and can make the cloud misbehave:

  * a proxy that Ferry's EC2 client is pointed at (instead of moto itself). It forwards every request unchanged
    (method, path, query, headers with Host and Authorization, so SigV4 signatures stay valid, body) and returns
    moto's answer unchanged, except that RunInstances gets EC2's own error answers on demand:
    InsufficientInstanceCapacity (HTTP 500) for a launch into a "full" zone, and InstanceLimitExceeded (HTTP 400)
    for every launch while the quota mode is on. Ferry's client (crates/ferry-cloud/src/ec2/xml.rs, `classify`)
    maps these codes to ProviderError::NoCapacity and ProviderError::QuotaExceeded. Every request is counted by
    its Action. moto ignores RunInstances' ClientToken (every call launches anew), so the proxy can optionally
    play EC2's idempotency: a repeated token gets the first launch's answer again, without reaching moto.
  * a watcher that polls moto directly every 0.3 s for instances tagged `ferry-installation` and reports each new
    pending/running one with its decoded user data (the start-up script, join token included), which the test
    can then run as the machine's "boot", and each reported one that ends (shutting-down or terminated).

Protocol: one JSON object per line. On stdout, events: `ready` (once, first), `launched`, `terminated`, and one
answer per command (`ok`, `calls`, `instances` or `error`). On stdin, commands:
  {"cmd":"full_zones","zones":["us-east-1a"]}   zones whose RunInstances answer InsufficientInstanceCapacity
  {"cmd":"quota","on":true}                     every RunInstances answers InstanceLimitExceeded
  {"cmd":"idempotency","on":true}               replay RunInstances answers by ClientToken, as EC2 does
  {"cmd":"access_keys","keys":["testing"]}      only these access key ids get through (EC2's AuthFailure,
                                                HTTP 401, for any other); null lets every key through
  {"cmd":"hold_launches","on":true}             launches go through, but their answers wait until turned off
  {"cmd":"reclaim","id":"i-..."}                terminate an instance, as a spot reclaim would
  {"cmd":"calls"}                               requests per Action so far
  {"cmd":"instances"}                           every tagged instance with its state
The harness exits on stdin's end of file. Logs go to stderr.

  hypervisor.py --moto URL [--listen HOST:PORT] [--region us-east-1] [--client-token-idempotency]

Credentials for boto3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, by default `testing` (any key works on moto).
"""

import argparse
import base64
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

POLL_S = 0.3
TAG_INSTALLATION = "ferry-installation"
# Headers that belong to one connection, not to the request: never forwarded either way.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}

_out_lock = threading.Lock()


def emit(**event):
    """Writes one event line to stdout, whole, whatever thread it comes from."""
    line = json.dumps(event, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(message):
    print(f"hypervisor: {message}", file=sys.stderr, flush=True)


class Faults:
    """What the proxy does besides forwarding, changed by the commands, read by the proxy's threads."""

    def __init__(self, idempotency):
        self.lock = threading.Lock()
        self.full_zones = set()
        self.quota = False
        self.idempotency = idempotency
        self.hold = threading.Event()  # set: RunInstances answers are held back until it is cleared
        self.released = threading.Condition()
        self.access_keys = None  # when set, only these access key ids are let through (EC2's AuthFailure otherwise)
        self.token_lock = threading.Lock()  # one launch per ClientToken, even for two racing calls
        self.calls = Counter()  # every request, by Action, refused or not
        self.injected = Counter()  # the refusals the proxy made up, by error code
        self.by_token = {}  # ClientToken -> (status, headers, body) of its first successful RunInstances


def ec2_error(status, code, message):
    """EC2's error answer: (status, headers, body), as xml.rs `error` parses it."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    return status, [("Content-Type", "text/xml;charset=UTF-8")], body


def make_handler(upstream, faults):
    """The proxy's request handler, forwarding to moto at `upstream` (a parsed URL)."""

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as reqwest's connection pool expects

        def log_message(self, fmt, *args):  # quiet: the test reads counts, not an access log
            pass

        def _body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after the chunk (or after the trailers, when size is 0)
                    if size == 0:
                        return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self, body):
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=60)
            try:
                # The client's own Host header goes through: moto checks signatures against it when auth is on.
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        conn.putheader(name, value)
                if body or self.command in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
                resp = conn.getresponse()
                headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP | {"content-length"}]
                return resp.status, headers, resp.read()
            except OSError as e:
                log(f"moto did not answer: {e}")
                return 502, [("Content-Type", "text/plain")], f"hypervisor proxy: moto did not answer: {e}".encode()
            finally:
                conn.close()

        def _answer(self, status, headers, body):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self):
            body = self._body()
            params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
                params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
            first = lambda name: params.get(name, [None])[0]  # noqa: E731
            action = first("Action") or "(none)"
            with faults.lock:
                faults.calls[action] += 1
                keys = faults.access_keys
            if keys is not None:
                # SigV4: `Authorization: AWS4-HMAC-SHA256 Credential=KEYID/date/region/ec2/aws4_request, ...`.
                auth = self.headers.get("Authorization", "")
                key = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
                if key not in keys:
                    faults.injected["AuthFailure"] += 1
                    return self._answer(*ec2_error(401, "AuthFailure", "AWS was not able to validate the provided access credentials"))
            if action != "RunInstances":
                return self._answer(*self._forward(body))
            zone, itype, token = first("Placement.AvailabilityZone"), first("InstanceType"), first("ClientToken")
            with faults.lock:
                quota, full, idempotent = faults.quota, zone in faults.full_zones, faults.idempotency
            if quota:
                faults.injected["InstanceLimitExceeded"] += 1
                return self._answer(*ec2_error(400, "InstanceLimitExceeded", (
                    "You have requested more instances (1) than your current instance limit of 0 allows for the "
                    "specified instance type. Please visit http://aws.amazon.com/contact-us/ec2-request to request "
                    "an adjustment to this limit.")))
            if full:
                faults.injected["InsufficientInstanceCapacity"] += 1
                return self._answer(*ec2_error(500, "InsufficientInstanceCapacity", (
                    f"We currently do not have sufficient {itype} capacity in the Availability Zone you requested "
                    f"({zone}). Our system will be working on provisioning additional capacity. You can currently "
                    f"get {itype} capacity by not specifying an Availability Zone in your request or choosing "
                    f"another Availability Zone.")))
            if faults.hold.is_set():
                # The launch happens, but its answer waits: the caller may die in between, as a crashed server would.
                answer = self._forward(body)
                if token and 200 <= answer[0] < 300:
                    with faults.token_lock:
                        faults.by_token.setdefault(token, answer)
                while faults.hold.is_set():
                    time.sleep(0.05)
                try:
                    return self._answer(*answer)
                except OSError:
                    return None  # the caller is gone
            if not (idempotent and token):
                return self._answer(*self._forward(body))
            # EC2's idempotency, which moto lacks: the first successful answer for a token is the answer for it.
            with faults.token_lock:
                if token not in faults.by_token:
                    answer = self._forward(body)
                    if 200 <= answer[0] < 300:
                        faults.by_token[token] = answer
                else:
                    answer = faults.by_token[token]
            return self._answer(*answer)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    return Proxy


def describe(instance):
    """The fields of an instance the events and `instances` carry."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    return {
        "id": instance["InstanceId"],
        "state": instance["State"]["Name"],
        "node": tags.get("ferry-node"),
        "pool": tags.get("ferry-pool"),
        "installation": tags.get(TAG_INSTALLATION),
        "zone": instance.get("Placement", {}).get("AvailabilityZone"),
        "type": instance.get("InstanceType"),
        "market": "spot" if instance.get("InstanceLifecycle") == "spot" else "on-demand",
    }


def tagged_instances(ec2):
    """Every instance that carries the installation tag, whatever its value or state."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "tag-key", "Values": [TAG_INSTALLATION]}])
    return [describe(i) for page in pages for r in page["Reservations"] for i in r["Instances"]]


def watch(ec2, stop):
    """Reports new pending/running tagged instances (with their user data) and the end of those it reported."""
    seen, live = set(), set()
    while not stop.wait(POLL_S):
        try:
            for inst in tagged_instances(ec2):
                iid, state = inst["id"], inst["state"]
                if iid not in seen:
                    seen.add(iid)
                    if state not in ("pending", "running"):
                        continue  # born and gone between two polls, or older than this harness
                    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                    user_data = base64.b64decode(attr.get("UserData", {}).get("Value", "")).decode("utf-8", "replace")
                    live.add(iid)
                    emit(event="launched", id=iid, node=inst["node"], pool=inst["pool"], zone=inst["zone"],
                         type=inst["type"], market=inst["market"], user_data=user_data)
                elif iid in live and state in ("shutting-down", "terminated"):
                    live.discard(iid)
                    emit(event="terminated", id=iid, state=state)
        except Exception as e:  # moto busy or going away: the next poll tries again
            log(f"polling moto failed: {e}")


def reclaim(ec2, iid):
    """Terminates an instance as a spot reclaim does; returns its state once moto says it is ending."""
    ec2.terminate_instances(InstanceIds=[iid])
    for _ in range(100):
        state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
        if state in ("shutting-down", "terminated"):
            return state
        time.sleep(0.1)
    raise RuntimeError(f"{iid} is still {state} after being terminated")


def command(line, ec2, faults):
    """Runs one command line; returns the answer event."""
    cmd = json.loads(line)
    name = cmd.get("cmd")
    if name == "full_zones":
        zones = cmd.get("zones") or []
        if not isinstance(zones, list) or not all(isinstance(z, str) for z in zones):
            raise ValueError("zones must be a list of zone names")
        with faults.lock:
            faults.full_zones = set(zones)
        return {"event": "ok", "cmd": name, "zones": sorted(zones)}
    if name == "hold_launches":
        if cmd.get("on"):
            faults.hold.set()
        else:
            faults.hold.clear()
        return {"event": "ok", "cmd": name, "on": bool(cmd.get("on"))}
    if name in ("quota", "idempotency"):
        with faults.lock:
            setattr(faults, name, bool(cmd.get("on")))
        return {"event": "ok", "cmd": name, "on": bool(cmd.get("on"))}
    if name == "access_keys":
        keys = cmd.get("keys")
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            raise ValueError("keys must be a list of access key ids, or null to let every key through")
        with faults.lock:
            faults.access_keys = None if keys is None else set(keys)
        return {"event": "ok", "cmd": name, "keys": keys}
    if name == "reclaim":
        return {"event": "ok", "cmd": name, "id": cmd["id"], "state": reclaim(ec2, cmd["id"])}
    if name == "calls":
        with faults.lock:
            return {"event": "calls", "counts": dict(faults.calls), "injected": dict(faults.injected)}
    if name == "instances":
        return {"event": "instances", "instances": tagged_instances(ec2)}
    raise ValueError(f"unknown command {name!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moto", required=True, help="moto's URL, such as http://127.0.0.1:5000")
    ap.add_argument("--listen", default="127.0.0.1:0", help="the proxy's HOST:PORT; port 0 for a free one")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--client-token-idempotency", action="store_true", help="replay RunInstances by ClientToken")
    args = ap.parse_args()

    upstream = urllib.parse.urlsplit(args.moto)
    host, _, port = args.listen.rpartition(":")
    faults = Faults(args.client_token_idempotency)
    ec2 = boto3.client(
        "ec2",
        endpoint_url=args.moto.rstrip("/"),
        region_name=args.region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    ec2.describe_instances(MaxResults=5)  # moto answers, or this fails loudly before `ready`

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port or 0)), make_handler(upstream, faults))
    server.daemon_threads = True  # a kept-alive client connection must not hold up the exit
    threading.Thread(target=server.serve_forever, name="proxy", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    emit(event="ready", proxy=f"http://{bound_host}:{bound_port}", moto=args.moto.rstrip("/"))

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(ec2, stop), name="watcher", daemon=True)
    watcher.start()

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            emit(**command(line, ec2, faults))
        except Exception as e:
            emit(event="error", message=f"{type(e).__name__}: {e}", line=line.strip())

    stop.set()
    watcher.join(timeout=5)
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    main()
