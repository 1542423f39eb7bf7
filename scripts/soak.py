#!/usr/bin/env python3
"""Soak test: many connections and bytes through outbound + inbound portcullis.

    client --plaintext--> outbound proxy --mTLS--> inbound proxy --plaintext--> echo backend

The script starts both proxies from --binary, with certificates made by
`portcullis ca init` + `portcullis ca issue` when the binary has them (else
with openssl), and an echo backend. While worker threads push connections
through the chain (each sends its payload, half-closes, and checks the echo
byte for byte), it

  * rotates the inbound proxy's certificate every --rotate-every seconds
    (a fresh key and certificate renamed over its cert/key files, or with
    --rotation symlink a Kubernetes-style `..data` symlink swap) and checks
    that the proxy serves the new certificate within 10 s;
  * reloads both proxies every --reload-every seconds (the config file is
    rewritten with a changed idle_timeout, then POST /reload);
  * samples the RSS and open fds of both proxies every second.

It reports errors (must be 0), RSS first (after warm-up) / last / max (must
be flat), and open fds at the end against the baseline before the load
(must be back to it). Exit status 0 when all hold, 1 otherwise, 2 when the
setup failed. Standard library only.

    scripts/soak --duration 60                       # the short version (CI)
    scripts/soak --connections 1000000 --bytes 50G   # the long one
"""

import argparse
import json
import os
import selectors
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TRUST_DOMAIN = "example.org"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/api/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend"
SERVER_DNS = "proxy.example.org"
MIB = 1024 * 1024


def parse_size(text):
    """'50G' -> bytes (binary units K, M, G, T)."""
    text = text.strip().upper().rstrip("B").rstrip("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human_bytes(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


# --------------------------------------------------------------------- PKI


class PortcullisCa:
    """Certificates from `portcullis ca init` / `portcullis ca issue`."""

    name = "portcullis ca"

    def __init__(self, binary, dir):
        self.binary = binary
        self.dir = os.path.join(dir, "ca")
        result = run([binary, "ca", "init", "--dir", self.dir, "--trust-domain", TRUST_DOMAIN])
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip() or result.stdout.strip())
        self.bundle = None

    def issue(self, prefix, spiffe_id, dns=()):
        cmd = [self.binary, "ca", "issue", "--dir", self.dir, "--spiffe-id", spiffe_id,
               "--ttl", "1h", "--out", prefix]
        for name in dns:
            cmd += ["--dns", name]
        result = run(cmd)
        if result.returncode != 0:
            raise RuntimeError(f"ca issue: {result.stderr.strip()}")
        if self.bundle is None:
            self.bundle = prefix + ".bundle.crt"
        os.chmod(prefix + ".key", 0o600)
        return prefix + ".crt", prefix + ".key"


class OpenSslCa:
    """Certificates from the openssl command: root + intermediate, EC P-256."""

    name = "openssl"

    def __init__(self, dir):
        self.dir = os.path.join(dir, "ca")
        os.makedirs(self.dir)
        self.serial = 1000
        root_key, self.bundle = self._path("root.key"), self._path("root.crt")
        self._key(root_key)
        self._ok(["openssl", "req", "-x509", "-new", "-key", root_key, "-subj", "/CN=Soak Root CA",
                  "-days", "30", "-out", self.bundle,
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                  "-addext", "subjectKeyIdentifier=hash"])
        self.int_key, self.int_crt = self._path("int.key"), self._path("int.crt")
        self._key(self.int_key)
        csr = self._path("int.csr")
        self._ok(["openssl", "req", "-new", "-key", self.int_key, "-subj",
                  "/CN=Soak Intermediate CA", "-out", csr])
        ext = self._path("int.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature\n"
                    "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        self._sign(csr, ext, self.bundle, root_key, self.int_crt, days=30)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _ok(self, cmd):
        result = run(cmd)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}: {result.stderr.strip()}")

    def _key(self, path):
        self._ok(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                  "ec_paramgen_curve:P-256", "-out", path])
        os.chmod(path, 0o600)

    def _sign(self, csr, ext, ca_crt, ca_key, out, days):
        self.serial += 1
        self._ok(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                  "-set_serial", str(self.serial), "-days", str(days), "-sha256",
                  "-extfile", ext, "-out", out])

    def issue(self, prefix, spiffe_id, dns=()):
        key, crt, csr, ext = prefix + ".key", prefix + ".crt", prefix + ".csr", prefix + ".ext"
        self._key(key)
        self._ok(["openssl", "req", "-new", "-key", key, "-subj", "/CN=soak", "-out", csr])
        san = ",".join([f"URI:{spiffe_id}"] + [f"DNS:{d}" for d in dns])
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\n"
                    f"authorityKeyIdentifier=keyid\nsubjectAltName={san}\n")
        leaf = prefix + ".leaf.crt"
        self._sign(csr, ext, self.int_crt, self.int_key, leaf, days=1)
        with open(crt, "w") as out, open(leaf) as a, open(self.int_crt) as b:
            out.write(a.read() + b.read())
        for path in (csr, ext, leaf):
            os.remove(path)
        return crt, key


def make_ca(binary, dir, choice):
    if choice == "openssl":
        return OpenSslCa(dir)
    try:
        return PortcullisCa(binary, dir)
    except Exception as error:  # not implemented in this build, or failed
        if choice == "portcullis":
            raise
        shutil.rmtree(os.path.join(dir, "ca"), ignore_errors=True)
        print(f"soak: `portcullis ca` unavailable ({str(error).splitlines()[0]}); using openssl",
              flush=True)
        return OpenSslCa(dir)


def first_cert_der(path):
    with open(path) as f:
        text = f.read()
    end = text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[:end])


# ------------------------------------------------------------ echo backend


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        try:
            while True:
                data = sock.recv(256 * 1024)
                if not data:
                    break
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


# ------------------------------------------------------------------ proxies


class Proxy:
    def __init__(self, name, binary, dir, config):
        self.name = name
        self.binary = binary
        self.dir = os.path.join(dir, f"conf-{name}")
        os.makedirs(self.dir)
        self.config_path = os.path.join(self.dir, "portcullis.toml")
        # Every listener binds port 0; the proxy says where in its ready file.
        self.ready_path = os.path.join(self.dir, "ready.json")
        self.admin_port = None
        self.config = config
        self.generation = 0
        self.write_config()
        self.log_path = os.path.join(dir, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [binary, "run", "-c", self.config_path, "--ready-file", self.ready_path],
            stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        self.pid = self.process.pid

    def write_config(self):
        # The idle timeout changes on every rewrite, so each reload is a real
        # change to the listener, applied to new connections.
        idle = 3600 + self.generation % 2
        text = "[admin]\nlisten = \"127.0.0.1:0\"\n\n" + \
            self.config.replace("IDLE_TIMEOUT", f"\"{idle}s\"")
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def http(self, method, path, timeout=10):
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_bound(self, limit=20):
        """Wait for the ready file; learn the admin port from it."""
        deadline = time.monotonic() + limit
        while not os.path.exists(self.ready_path):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} proxy exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} proxy not bound in {limit}s: {self.tail()}")
            time.sleep(0.05)
        self.admin_port = self.listener("admin")[1]

    def listener(self, kind, name=None):
        """(host, port) of a listener, as the ready file says now."""
        with open(self.ready_path) as f:
            bound = json.load(f)
        address = bound[kind] if name is None else bound[kind][name]
        host, port = address.rsplit(":", 1)
        return host, int(port)

    def wait_ready(self, limit=20):
        self.wait_bound(limit)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} proxy exited: {self.tail()}")
            try:
                if self.http("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} proxy not ready in {limit}s: {self.tail()}")

    def reload(self):
        self.generation += 1
        self.write_config()
        status, body = self.http("POST", "/reload")
        if status != 200:
            raise RuntimeError(f"{self.name} reload: {status} {body.strip()}")

    def metrics(self):
        return self.http("GET", "/metrics")[1]

    def metric(self, name, *labels):
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
                continue
            if all(label in line for label in labels):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def tail(self, lines=20):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# --------------------------------------------------------------------- load


class Stats:
    def __init__(self, max_samples=20):
        self.lock = threading.Lock()
        self.connections = 0
        self.bytes = 0
        self.errors = 0
        self.samples = []
        self.max_samples = max_samples
        self.started = 0  # connections handed out

    def error(self, kind, detail):
        with self.lock:
            self.errors += 1
            if len(self.samples) < self.max_samples:
                self.samples.append(f"{kind}: {detail}")
        print(f"soak: ERROR {kind}: {detail}", file=sys.stderr, flush=True)


def one_connection(port, payload, timeout):
    """Send `payload`, half-close, read the echo to EOF; raise on any fault."""
    n = len(payload)
    view = memoryview(payload)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        sent = received = 0
        deadline = time.monotonic() + timeout
        done_writing = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"sent {sent}, echoed {received} of {n} after {timeout}s")
            for _, mask in sel.select(remaining):
                if mask & selectors.EVENT_WRITE and not done_writing:
                    try:
                        sent += sock.send(view[sent:sent + 256 * 1024])
                    except BlockingIOError:
                        pass
                    if sent == n:
                        sock.shutdown(socket.SHUT_WR)
                        done_writing = True
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(256 * 1024)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        if received != n:
                            raise ConnectionError(f"EOF after {received} of {n} echoed bytes")
                        return
                    if view[received:received + len(chunk)] != chunk:
                        raise ValueError(f"echo differs at offset {received}")
                    received += len(chunk)
    finally:
        sock.close()


def worker(args, port, stats, stop, payload):
    while not stop.is_set():
        with stats.lock:
            if args.connections and stats.started >= args.connections:
                return
            stats.started += 1
        try:
            one_connection(port, payload, args.timeout)
        except Exception as error:
            stats.error("connection", f"{type(error).__name__}: {error}")
            continue
        with stats.lock:
            stats.connections += 1
            stats.bytes += len(payload)


# ------------------------------------------------------------- periodic work


def probe_served_cert(port, client_crt, client_key, bundle):
    """The DER of the leaf the inbound proxy presents right now."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(bundle)
    context.check_hostname = False
    context.load_cert_chain(client_crt, client_key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=SERVER_DNS) as tls:
            return tls.getpeercert(binary_form=True)


def install_first_cert(args, ca, cert_dir):
    """The inbound proxy's first certificate at cert_dir/server.{crt,key},
    laid out for the rotation style."""
    if args.rotation == "symlink":
        # As Kubernetes mounts a Secret: the files are symlinks through
        # `..data`, itself a symlink to the current version's folder.
        os.makedirs(os.path.join(cert_dir, "..rot-0"))
        ca.issue(os.path.join(cert_dir, "..rot-0", "server"), SERVER_ID, [SERVER_DNS])
        os.symlink("..rot-0", os.path.join(cert_dir, "..data"))
        for name in ("server.crt", "server.key"):
            os.symlink(os.path.join("..data", name), os.path.join(cert_dir, name))
    else:
        ca.issue(os.path.join(cert_dir, "server"), SERVER_ID, [SERVER_DNS])


def rotate(args, ca, cert_dir, staging, serial):
    """Put a freshly issued cert and key in place; returns the new leaf's
    DER and how long the two files disagreed (rename style)."""
    if args.rotation == "symlink":
        version = f"..rot-{serial}"
        os.makedirs(os.path.join(cert_dir, version))
        crt, _ = ca.issue(os.path.join(cert_dir, version, "server"), SERVER_ID, [SERVER_DNS])
        der = first_cert_der(crt)
        link = os.path.join(cert_dir, "..data_tmp")
        os.symlink(version, link)
        os.replace(link, os.path.join(cert_dir, "..data"))  # both files change at once
        shutil.rmtree(os.path.join(cert_dir, f"..rot-{serial - 1}"), ignore_errors=True)
        return der, 0.0
    staged = os.path.join(staging, f"server-{serial}")
    crt, key = ca.issue(staged, SERVER_ID, [SERVER_DNS])
    der = first_cert_der(crt)
    # Key first, then the certificate, each renamed over the old file. The
    # proxy debounces change events (250 ms) and normally loads the pair
    # after both; if the two renames are further apart than that, it sees
    # a key that does not match the certificate, refuses that set, keeps
    # the old certificate and loads the pair on the next event.
    started = time.monotonic()
    os.replace(key, os.path.join(cert_dir, "server.key"))
    os.replace(crt, os.path.join(cert_dir, "server.crt"))
    gap = time.monotonic() - started
    if os.path.exists(staged + ".bundle.crt"):
        os.remove(staged + ".bundle.crt")
    return der, gap


def rotator(args, ca, cert_dir, staging, inbound, inbound_port, client_files, bundle,
            stats, stop, rotation):
    serial = 0
    while not stop.wait(args.rotate_every):
        serial += 1
        try:
            refused_before = inbound.metric("portcullis_cert_rotations_total", 'result="failure"')
            new_der, gap = rotate(args, ca, cert_dir, staging, serial)
            rotation["count"] += 1
            rotation["max_gap_ms"] = max(rotation["max_gap_ms"], round(gap * 1000, 1))
            deadline = time.monotonic() + 10
            while probe_served_cert(inbound_port, *client_files, bundle) != new_der:
                if time.monotonic() > deadline:
                    stats.error("rotation", f"rotation {serial} not served after 10s")
                    break
                time.sleep(0.1)
            refused = inbound.metric("portcullis_cert_rotations_total", 'result="failure"') \
                - refused_before
            if refused:
                rotation["refused_transient"] += int(refused)
                rotation["refused_gaps_ms"].append(round(gap * 1000, 1))
                if args.rotation == "symlink":
                    stats.error("rotation", f"rotation {serial}: an atomically swapped set "
                                            "was refused")
        except Exception as error:
            stats.error("rotation", f"{type(error).__name__}: {error}")


def reloader(args, proxies, stats, stop, counters):
    while not stop.wait(args.reload_every):
        for proxy in proxies:
            try:
                proxy.reload()
                counters["reloads"] += 1
            except Exception as error:
                stats.error("reload", f"{type(error).__name__}: {error}")


def sampler(proxies, samples, stop):
    while True:
        now = time.monotonic()
        for proxy in proxies:
            try:
                samples[proxy.name].append((now, proxy.rss(), proxy.fds()))
            except OSError:
                pass
        if stop.wait(1.0):
            return


# --------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(
        description="Soak portcullis: outbound + inbound, rotations and reloads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--binary", default="target/release/portcullis",
                        help="the portcullis binary to run")
    parser.add_argument("--duration", type=float, default=0,
                        help="seconds to run (0: until --connections and --bytes are reached)")
    parser.add_argument("--connections", type=int, default=0,
                        help="connections to make (0: no limit)")
    parser.add_argument("--bytes", type=parse_size, default=0,
                        help="bytes to send through, e.g. 50G (echoed back as much again)")
    parser.add_argument("--payload", type=parse_size, default=64 * 1024,
                        help="bytes per connection, unless --bytes/--connections set it")
    parser.add_argument("--concurrency", type=int, default=16, help="connections in flight")
    parser.add_argument("--rotate-every", type=float, default=3.0,
                        help="seconds between certificate rotations of the inbound proxy")
    parser.add_argument("--rotation", choices=("rename", "symlink"), default="rename",
                        help="rename: new key, then new cert renamed over the files; symlink: "
                             "a Kubernetes-style `..data` symlink swap (both at once)")
    parser.add_argument("--reload-every", type=float, default=4.0,
                        help="seconds between config reloads of both proxies")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the RSS 'first' sample (default: 10%% of the run, 5-60 s)")
    parser.add_argument("--rss-growth-mb", type=float, default=16,
                        help="largest RSS growth (last - first) tolerated per proxy")
    parser.add_argument("--fd-tolerance", type=int, default=0,
                        help="extra open fds at the end tolerated per proxy")
    parser.add_argument("--timeout", type=float, default=60, help="limit per connection")
    parser.add_argument("--pki", choices=("auto", "portcullis", "openssl"), default="auto",
                        help="who issues the certificates: `portcullis ca` (auto: when available) "
                             "or openssl")
    parser.add_argument("--json-out", help="write the report as JSON here")
    parser.add_argument("--workdir", help="keep files here (default: a temporary folder, removed)")
    args = parser.parse_args()

    if not args.duration and not (args.connections or args.bytes):
        parser.error("give --duration, or --connections and/or --bytes")
    if args.connections and args.bytes:
        args.payload = max(1, -(-args.bytes // args.connections))
    elif args.bytes and not args.connections:
        args.connections = -(-args.bytes // args.payload)
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"soak: {binary} is not an executable; build it or pass --binary", file=sys.stderr)
        return 2

    workdir = args.workdir or tempfile.mkdtemp(prefix="portcullis-soak-")
    os.makedirs(workdir, exist_ok=True)
    proxies = []
    echo = None
    try:
        try:
            ca = make_ca(binary, workdir, args.pki)
            in_certs = os.path.join(workdir, "certs-inbound")
            out_certs = os.path.join(workdir, "certs-outbound")
            staging = os.path.join(workdir, "staging")
            for d in (in_certs, out_certs, staging):
                os.makedirs(d, exist_ok=True)
            install_first_cert(args, ca, in_certs)
            client_crt, client_key = ca.issue(os.path.join(out_certs, "client"), CLIENT_ID)
            bundle = os.path.join(workdir, "bundle.crt")
            shutil.copy(ca.bundle, bundle)

            echo = EchoServer(("127.0.0.1", 0), EchoHandler)
            threading.Thread(target=echo.serve_forever, daemon=True).start()
            backend_port = echo.server_address[1]

            inbound = Proxy("inbound", binary, workdir, f"""
[identity]
source = "files"
cert = "{in_certs}/server.crt"
key = "{in_certs}/server.key"
trust_bundle = "{bundle}"

[[inbound]]
name = "api"
listen = "127.0.0.1:0"
backend = "127.0.0.1:{backend_port}"
idle_timeout = IDLE_TIMEOUT
max_connections = 4096

  [[inbound.allow]]
  spiffe_id = "{CLIENT_ID}"
""")
            proxies.append(inbound)
            inbound.wait_bound()
            inbound_port = inbound.listener("inbound", "api")[1]
            outbound = Proxy("outbound", binary, workdir, f"""
[identity]
source = "files"
cert = "{client_crt}"
key = "{client_key}"
trust_bundle = "{bundle}"

[[outbound]]
name = "api"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:{inbound_port}"
server_name = "{SERVER_DNS}"
expect = {{ spiffe_id = "{SERVER_ID}" }}
idle_timeout = IDLE_TIMEOUT
max_connections = 4096
""")
            proxies.append(outbound)
            for proxy in proxies:
                proxy.wait_ready()
            outbound_port = outbound.listener("outbound", "api")[1]
            one_connection(outbound_port, b"hello through both proxies", 10)
        except Exception as error:
            print(f"soak: setup failed: {error}", file=sys.stderr)
            for proxy in proxies:
                print(f"--- {proxy.name} log:\n{proxy.tail()}", file=sys.stderr)
            return 2

        print(f"soak: certificates from {ca.name}; binary {binary}", flush=True)
        target = []
        if args.connections:
            target.append(f"{args.connections} connections")
        if args.bytes:
            target.append(human_bytes(args.bytes))
        target = " and ".join(target)
        if args.duration:
            target = f"{args.duration:g}s" + (f" or until {target}" if target else "")
        else:
            target = f"until {target}"
        print(f"soak: running {target}; {human_bytes(args.payload)} per connection, "
              f"{args.concurrency} in flight, rotation every {args.rotate_every:g}s, "
              f"reload every {args.reload_every:g}s", flush=True)

        def drained():
            return all(p.metric("portcullis_connections_open") == 0 for p in proxies)

        def wait_drained(limit):
            deadline = time.monotonic() + limit
            while not drained() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)

        wait_drained(10)
        baseline = {p.name: {"rss": p.rss(), "fds": p.fds()} for p in proxies}
        reloads_before = {p.name: p.metric("portcullis_config_reloads_total", 'result="failure"')
                          for p in proxies}
        stats = Stats()
        stop = threading.Event()
        counters = {"reloads": 0}
        rotation = {"style": args.rotation, "count": 0, "max_gap_ms": 0.0,
                    "refused_transient": 0, "refused_gaps_ms": []}
        samples = {p.name: [] for p in proxies}
        payload = os.urandom(args.payload)
        threads = [threading.Thread(target=worker, args=(args, outbound_port, stats, stop, payload))
                   for _ in range(args.concurrency)]
        periodic = [
            threading.Thread(target=rotator, args=(args, ca, in_certs, staging, inbound, inbound_port,
                                                   (client_crt, client_key), bundle, stats, stop,
                                                   rotation)),
            threading.Thread(target=reloader, args=(args, proxies, stats, stop, counters)),
        ]
        sampling_stop = threading.Event()
        sampling = threading.Thread(target=sampler, args=(proxies, samples, sampling_stop))
        started = time.monotonic()
        sampling.start()
        for t in threads + periodic:
            t.start()

        last_report = started
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            now = time.monotonic()
            if args.duration and now - started >= args.duration:
                break
            if args.bytes and stats.bytes >= args.bytes and (
                    not args.connections or stats.connections >= args.connections):
                break
            for proxy in proxies:
                if proxy.process.poll() is not None:
                    stats.error("proxy", f"{proxy.name} exited with {proxy.process.returncode}")
                    stop.set()
            if now - last_report >= 10:
                last_report = now
                with stats.lock:
                    line = (f"soak: {now - started:6.0f}s  {stats.connections} connections  "
                            f"{human_bytes(stats.bytes)}  {stats.errors} errors  "
                            f"rotations {rotation['count']}  reloads {counters['reloads']}")
                for proxy in proxies:
                    s = samples[proxy.name]
                    if s:
                        line += f"  {proxy.name} {s[-1][1] / MIB:.1f} MiB/{s[-1][2]} fds"
                print(line, flush=True)
        stop.set()
        for t in threads + periodic:
            t.join()
        elapsed = time.monotonic() - started

        # Let the last connections drain, then count descriptors.
        wait_drained(15)
        sampling_stop.set()
        sampling.join()

        failures = []
        report = {
            "binary": binary,
            "certificates": ca.name,
            "duration_s": round(elapsed, 1),
            "connections": stats.connections,
            "bytes": stats.bytes,
            "bytes_echoed": stats.bytes,
            "payload": args.payload,
            "concurrency": args.concurrency,
            "connections_per_s": round(stats.connections / elapsed, 1) if elapsed else 0,
            "errors": stats.errors,
            "error_samples": stats.samples,
            "rotations": rotation["count"],
            "rotation": rotation,
            "reloads": counters["reloads"],
            "proxies": {},
        }
        if stats.errors:
            failures.append(f"{stats.errors} errors")
        warmup = args.warmup if args.warmup is not None else min(60, max(5, elapsed * 0.1))
        for proxy in proxies:
            s = samples[proxy.name]
            steady = [rss for t, rss, _ in s if t - started >= warmup] or [rss for _, rss, _ in s]
            rss = {
                "start_mib": round(baseline[proxy.name]["rss"] / MIB, 1),
                "first_mib": round(steady[0] / MIB, 1),
                "last_mib": round(steady[-1] / MIB, 1),
                "max_mib": round(max(r for _, r, _ in s) / MIB, 1),
                "samples": len(s),
                "warmup_s": round(warmup, 1),
            }
            fds = {"baseline": baseline[proxy.name]["fds"], "end": proxy.fds(),
                   "max": max(f for _, _, f in s)}
            reload_failures = proxy.metric("portcullis_config_reloads_total", 'result="failure"') \
                - reloads_before[proxy.name]
            entry = {"rss": rss, "fds": fds, "reload_failures": reload_failures,
                     "open_connections_end": proxy.metric("portcullis_connections_open")}
            if proxy is inbound:
                entry["rotations_installed"] = proxy.metric(
                    "portcullis_cert_rotations_total", 'result="success"')
            report["proxies"][proxy.name] = entry
            growth = steady[-1] - steady[0]
            if growth > args.rss_growth_mb * MIB:
                failures.append(f"{proxy.name} RSS grew {growth / MIB:.1f} MiB "
                                f"(> {args.rss_growth_mb:g}) after warm-up")
            if fds["end"] > fds["baseline"] + args.fd_tolerance:
                failures.append(f"{proxy.name} has {fds['end']} fds open, {fds['baseline']} at baseline")
            if reload_failures:
                failures.append(f"{proxy.name}: {reload_failures:g} failed reloads")
            if proxy.process.poll() is not None:
                failures.append(f"{proxy.name} exited")
        if stats.connections == 0:
            failures.append("no connection completed")
        report["failures"] = failures
        report["passed"] = not failures

        print(f"soak: {stats.connections} connections, {human_bytes(stats.bytes)} each way in "
              f"{elapsed:.0f}s ({report['connections_per_s']}/s); {stats.errors} errors; "
              f"{rotation['count']} rotations ({args.rotation}), {counters['reloads']} reloads")
        if rotation["refused_transient"]:
            print(f"soak: the inbound proxy refused {rotation['refused_transient']} half-renamed "
                  f"cert/key sets (key and cert renamed {rotation['refused_gaps_ms']} ms apart), "
                  "kept its certificate and installed the pair on the next event")
        for name, entry in report["proxies"].items():
            r, f = entry["rss"], entry["fds"]
            print(f"soak: {name:8} RSS start {r['start_mib']} MiB, first {r['first_mib']} "
                  f"(after {r['warmup_s']}s), last {r['last_mib']}, max {r['max_mib']}; "
                  f"fds baseline {f['baseline']}, end {f['end']}, max {f['max']}")
        for sample in stats.samples:
            print(f"soak: error: {sample}")
        print("soak: PASS" if not failures else f"soak: FAIL: {'; '.join(failures)}", flush=True)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(report, f, indent=2)
        if failures:
            for proxy in proxies:
                print(f"--- {proxy.name} log (tail):\n{proxy.tail()}", file=sys.stderr)
        return 0 if not failures else 1
    finally:
        for proxy in proxies:
            proxy.stop()
        if echo is not None:
            echo.shutdown()
            echo.server_close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
