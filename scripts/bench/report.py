#!/usr/bin/env python3
"""Turn scripts/bench-compare's raw results into markdown tables.

Input: one line per measurement, `target=T workload=W run=R key=value ...`
(the load generator's own line after the first three), and a meta file of
`key=value` lines. Output: markdown on stdout and, with --doc, the block
between the BEGIN/END markers of docs/benchmarks.md replaced by it.
"""

import argparse
import statistics
from collections import defaultdict

BEGIN = "<!-- BEGIN bench-compare results -->"
END = "<!-- END bench-compare results -->"

PEERS = ["stunnel", "haproxy", "nginx"]
ORDER = ["portcullis", "stunnel", "haproxy", "nginx", "relay", "direct"]
LABEL = {
    "portcullis": "portcullis",
    "stunnel": "stunnel",
    "haproxy": "HAProxy",
    "nginx": "nginx stream",
    "relay": "plaintext relay",
    "direct": "no proxy",
}

# The targets of issue 7.
BULK_CPU_S_PER_GB = 0.5
BULK_VS_PEER = 1.5
HANDSHAKE_CPU_MS = 0.4
HANDSHAKE_VS_PEER = 3.0
ADDED_P50_US = 25.0
ADDED_P99_US = 80.0
IDLE_KIB = 16.0
RSS_START_MIB = 15.0


def parse_line(line):
    fields = {}
    for token in line.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields[key] = value
    return fields


def load(results_path):
    data = defaultdict(lambda: defaultdict(list))  # (target, workload) -> key -> [values]
    failures = defaultdict(int)
    negotiated = defaultdict(set)
    tickets = defaultdict(list)
    for line in open(results_path):
        f = parse_line(line)
        if not f:
            continue
        key = (f.get("target"), f.get("workload"))
        if f.get("failed") == "1":
            failures[key] += 1
            continue
        for k, v in f.items():
            try:
                data[key][k].append(float(v))
            except ValueError:
                pass
        if f.get("tls"):
            negotiated[f["target"]].add(f["tls"])
        if f.get("mode") == "connect" and "tickets" in f and float(f.get("connections", 0)) > 0:
            tickets[f["target"]].append(float(f["tickets"]) / float(f["connections"]))
    return data, failures, negotiated, tickets


def med(data, target, workload, key):
    values = data.get((target, workload), {}).get(key)
    if not values:
        return None
    return statistics.median(values)


def fmt(value, digits=2, unit=""):
    if value is None:
        return "—"
    return f"{value:.{digits}f}{unit}"


def verdict(ok):
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def report(results_path, meta):
    data, failures, negotiated, tickets = load(results_path)
    targets = [t for t in ORDER if any(k[0] == t for k in data)]
    out = []
    w = out.append

    load_before = meta.get("load_before", "?")
    load1 = float(load_before.split()[0]) if load_before != "?" else 0.0
    runs = int(meta.get("runs", "0"))
    preliminary = []
    if load1 > 1.0:
        preliminary.append(f"machine under load (load average {load_before} at start, {meta.get('load_after', '?')} at end)")
    if runs < 5:
        preliminary.append(f"{runs} run(s) instead of 5")
    if float(meta.get("duration", "2")) < 2:
        preliminary.append(f"{meta.get('duration')} s measurements")
    if preliminary:
        w(f"**Preliminary: {'; '.join(preliminary)}. Do not quote these numbers.**")
        w("")
    w(f"- Date: {meta.get('date')}")
    w(f"- Machine: {meta.get('nproc')} cores, {meta.get('cpu')}, Linux {meta.get('kernel')}; "
      f"open-file limit {meta.get('nofile')}")
    w(f"- Command: `{meta.get('command')}`")
    w(f"- Load average (1/5/15 min): {load_before} before, {meta.get('load_after')} after")
    w(f"- Versions: {meta.get('versions')}")
    w(f"- Per workload: {meta.get('runs')} run(s), medians; bulk and connect {meta.get('duration')} s, "
      f"latency {meta.get('latency_duration')} s at {meta.get('rate')} msg/s, idle {meta.get('idle')} connections")
    w(f"- Time: packages {meta.get('apt_secs')} s, `cargo build --release` {meta.get('build_secs')} s, "
      f"load generator build {meta.get('loadgen_build_secs')} s, measurements {meta.get('measure_secs')} s, "
      f"total {meta.get('total_secs')} s")
    tls_seen = sorted({t for s in negotiated.values() for t in s if t != "plain"})
    w(f"- Negotiated (every TLS target): {', '.join(tls_seen) or '—'}; session tickets received per "
      f"connection: " + ", ".join(f"{LABEL.get(t, t)} {statistics.median(v):.1f}" for t, v in sorted(tickets.items())
                                 if t in LABEL and t not in ("relay", "direct")))
    if failures:
        w("- Failed measurements: " + ", ".join(f"{t} {wl} ×{n}" for (t, wl), n in sorted(failures.items())))
    w("")

    # Throughput.
    w("### Bulk (16 KiB writes, client → proxy → sink)")
    w("")
    w("| | 1 stream GB/s | 1 stream proxy CPU-s/GB | 8 streams GB/s | 8 streams proxy CPU-s/GB |")
    w("|---|---:|---:|---:|---:|")
    for t in targets:
        w(f"| {LABEL[t]} | {fmt(med(data, t, 'bulk-1', 'gbytes_per_s'))} | "
          f"{fmt(med(data, t, 'bulk-1', 'cpu_s_per_gb'), 3)} | {fmt(med(data, t, 'bulk-8', 'gbytes_per_s'))} | "
          f"{fmt(med(data, t, 'bulk-8', 'cpu_s_per_gb'), 3)} |")
    w("")

    w("### Connections (full mTLS handshake + backend connect + 1-byte echo + close)")
    w("")
    w("| | c=1 conn/s | c=1 proxy CPU-ms/conn | c=64 conn/s | c=64 proxy CPU-ms/conn | c=64 p50 / p99 ms (client view) |")
    w("|---|---:|---:|---:|---:|---:|")
    for t in targets:
        p50 = med(data, t, "connect-64", "p50_us")
        p99 = med(data, t, "connect-64", "p99_us")
        w(f"| {LABEL[t]} | {fmt(med(data, t, 'connect-1', 'conn_per_s'), 0)} | "
          f"{fmt(med(data, t, 'connect-1', 'cpu_ms_per_conn'), 3)} | {fmt(med(data, t, 'connect-64', 'conn_per_s'), 0)} | "
          f"{fmt(med(data, t, 'connect-64', 'cpu_ms_per_conn'), 3)} | "
          f"{fmt(p50 / 1000 if p50 else None, 2)} / {fmt(p99 / 1000 if p99 else None, 2)} |")
    w("")

    w(f"### Latency (open loop, {meta.get('rate')} msg/s, one connection; µs from send to echo)")
    w("")
    w("| | 64 B p50 | p99 | p99.9 | added p50 / p99 | 1 KiB p50 | p99 | p99.9 | added p50 / p99 |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        row = [LABEL[t]]
        for wl in ("latency-64", "latency-1k"):
            p50, p99, p999 = (med(data, t, wl, k) for k in ("p50_us", "p99_us", "p999_us"))
            b50, b99 = med(data, "direct", wl, "p50_us"), med(data, "direct", wl, "p99_us")
            added = "—"
            if t != "direct" and None not in (p50, p99, b50, b99):
                added = f"{p50 - b50:.1f} / {p99 - b99:.1f}"
            row += [fmt(p50, 1), fmt(p99, 1), fmt(p999, 1), added]
        w("| " + " | ".join(row) + " |")
    w("")

    w(f"### Memory ({meta.get('idle')} idle mTLS connections, each after a handshake and a 1-byte echo)")
    w("")
    w("| | RSS at start MiB | idle connections held | RSS growth KiB per connection |")
    w("|---|---:|---:|---:|")
    for t in targets:
        if t == "direct":
            continue
        rss = med(data, t, "rss-start", "rss_start_kib")
        w(f"| {LABEL[t]} | {fmt(rss / 1024 if rss else None, 1)} | {fmt(med(data, t, 'idle', 'connections'), 0)} | "
          f"{fmt(med(data, t, 'idle', 'kib_per_conn'), 1)} |")
    w("")
    if "nginx" in targets:
        w("nginx figures are master + worker; HAProxy, stunnel and portcullis are one process each.")
        w("")

    # Outbound resumption.
    if any(k[0] in ("out-resume", "out-full") for k in data):
        w("### Outbound session resumption (service → portcullis outbound → nginx mTLS upstream, c=16)")
        w("")
        w("| upstream | sessions resumed | conn/s | portcullis CPU-ms/conn |")
        w("|---|---:|---:|---:|")
        for t, label in (("out-resume", "issues tickets (resumption on)"), ("out-full", "no tickets (every handshake full)")):
            reused = data.get((t, "reuse"), {})
            ratio = None
            if reused.get("sessions") and sum(reused["sessions"]) > 0:
                ratio = 100.0 * sum(reused["reused"]) / sum(reused["sessions"])
            w(f"| {label} | {fmt(ratio, 1, ' %')} | {fmt(med(data, t, 'connect-16', 'conn_per_s'), 0)} | "
              f"{fmt(med(data, t, 'connect-16', 'cpu_ms_per_conn'), 3)} |")
        w("")

    # Providers.
    prov = [v for (t, wl), v in data.items() if t == "provider"]
    if prov:
        w("### Crypto provider (in-memory mTLS handshake, rustls + webpki, no portcullis policy; µs per handshake)")
        w("")
        w("| provider | both sides | server side |")
        w("|---|---:|---:|")
        rows = defaultdict(lambda: defaultdict(list))
        for line in open(results_path):
            f = parse_line(line)
            if f.get("target") == "provider" and "provider" in f:
                rows[f["provider"]]["total"].append(float(f["us_per_handshake"]))
                rows[f["provider"]]["server"].append(float(f["server_us_per_handshake"]))
        for name, r in sorted(rows.items()):
            w(f"| {name} | {statistics.median(r['total']):.1f} | {statistics.median(r['server']):.1f} |")
        w("")

    # Targets.
    w("### Targets (issue 7)")
    w("")
    w("| target | portcullis | best peer | verdict | context |")
    w("|---|---:|---:|---|---|")

    def best_peer(workload, key):
        values = [(med(data, p, workload, key), p) for p in PEERS]
        values = [(v, p) for v, p in values if v is not None]
        return min(values) if values else (None, None)

    for wl, name in (("bulk-1", "1 stream"), ("bulk-8", "8 streams")):
        pc = med(data, "portcullis", wl, "cpu_s_per_gb")
        peer, who = best_peer(wl, "cpu_s_per_gb")
        ok = None if pc is None else pc <= BULK_CPU_S_PER_GB
        relay = med(data, "relay", wl, "cpu_s_per_gb")
        w(f"| bulk {name}: ≤ {BULK_CPU_S_PER_GB} CPU-s/GB | {fmt(pc, 3)} | | {verdict(ok)} | "
          f"plaintext relay, no TLS: {fmt(relay, 3)} |")
        ok = None if pc is None or peer is None else pc * BULK_VS_PEER <= peer
        ratio = f" ({peer / pc:.2f}×)" if pc and peer else ""
        w(f"| bulk {name}: ≥ {BULK_VS_PEER}× best peer per CPU-s | {fmt(pc, 3)} | "
          f"{fmt(peer, 3)} {LABEL.get(who, '')}{ratio} | {verdict(ok)} | |")
    pc = med(data, "portcullis", "connect-64", "cpu_ms_per_conn")
    peer, who = best_peer("connect-64", "cpu_ms_per_conn")
    ok = None if pc is None else pc <= HANDSHAKE_CPU_MS
    w(f"| handshake: ≤ {HANDSHAKE_CPU_MS} ms proxy CPU | {fmt(pc, 3)} | | {verdict(ok)} | |")
    ok = None if pc is None or peer is None else pc * HANDSHAKE_VS_PEER <= peer
    ratio = f" ({peer / pc:.2f}×)" if pc and peer else ""
    need = f"needs ≤ {peer / HANDSHAKE_VS_PEER:.3f} ms" if peer else ""
    w(f"| handshake: ≥ {HANDSHAKE_VS_PEER}× best peer | {fmt(pc, 3)} | {fmt(peer, 3)} {LABEL.get(who, '')}{ratio} | {verdict(ok)} | {need} |")
    for wl, size in (("latency-64", "64 B"), ("latency-1k", "1 KiB")):
        p50, p99 = med(data, "portcullis", wl, "p50_us"), med(data, "portcullis", wl, "p99_us")
        b50, b99 = med(data, "direct", wl, "p50_us"), med(data, "direct", wl, "p99_us")
        if None in (p50, p99, b50, b99):
            w(f"| added latency {size}: p50 ≤ {ADDED_P50_US:.0f} µs, p99 ≤ {ADDED_P99_US:.0f} µs | — | | not measured | |")
            continue
        a50, a99 = p50 - b50, p99 - b99
        ok = a50 <= ADDED_P50_US and a99 <= ADDED_P99_US
        pa = [(med(data, p, wl, "p50_us"), p) for p in PEERS]
        pa = [(v - b50, p) for v, p in pa if v is not None]
        best = min(pa) if pa else (None, None)
        r50, r99 = med(data, "relay", wl, "p50_us"), med(data, "relay", wl, "p99_us")
        relay = f"plaintext relay adds {r50 - b50:.1f} / {r99 - b99:.1f} µs" if None not in (r50, r99) else ""
        w(f"| added latency {size}: p50 ≤ {ADDED_P50_US:.0f} µs, p99 ≤ {ADDED_P99_US:.0f} µs | "
          f"{a50:.1f} / {a99:.1f} µs | p50 {fmt(best[0], 1)} {LABEL.get(best[1], '')} | {verdict(ok)} | {relay} |")
    kib = med(data, "portcullis", "idle", "kib_per_conn")
    peer, who = best_peer("idle", "kib_per_conn")
    ok = None if kib is None else kib <= IDLE_KIB
    w(f"| ≤ {IDLE_KIB:.0f} KiB per idle connection | {fmt(kib, 1)} | {fmt(peer, 1)} {LABEL.get(who, '')} | {verdict(ok)} | |")
    rss = med(data, "portcullis", "rss-start", "rss_start_kib")
    ok = None if rss is None else rss / 1024 <= RSS_START_MIB
    w(f"| ≤ {RSS_START_MIB:.0f} MiB RSS at start | {fmt(rss / 1024 if rss else None, 1)} MiB | | {verdict(ok)} | |")
    reused = data.get(("out-resume", "reuse"), {})
    ratio = None
    if reused.get("sessions") and sum(reused["sessions"]) > 0:
        ratio = 100.0 * sum(reused["reused"]) / sum(reused["sessions"])
    on = med(data, "out-resume", "connect-16", "cpu_ms_per_conn")
    off = med(data, "out-full", "connect-16", "cpu_ms_per_conn")
    detail = f"{fmt(ratio, 1, ' %')} resumed; {fmt(on, 3)} vs {fmt(off, 3)} CPU-ms/conn"
    # "On by default" is met when most sessions resume and that saves CPU;
    # rustls keeps at most 8 tickets per upstream, so under concurrency a
    # few connections still find none and handshake in full.
    ok = None if ratio is None or on is None or off is None else ratio >= 50 and on < off
    w(f"| outbound session resumption on by default | {detail} | | {verdict(ok)} | |")
    w("")
    w("Why the missed targets are missed, with measurements: "
      "[Where portcullis spends its CPU](#where-portcullis-spends-its-cpu).")
    w("")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True)
    parser.add_argument("--meta", required=True)
    parser.add_argument("--doc")
    args = parser.parse_args()
    meta = {}
    for line in open(args.meta):
        if "=" in line:
            key, value = line.rstrip("\n").split("=", 1)
            meta[key] = value
    table = report(args.results, meta)
    print(table)
    if args.doc:
        try:
            text = open(args.doc).read()
        except FileNotFoundError:
            text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = f"{head}{BEGIN}\n{table}\n{END}{tail}"
        else:
            text = f"{text.rstrip()}\n\n## Results\n\n{BEGIN}\n{table}\n{END}\n"
        with open(args.doc, "w") as f:
            f.write(text)
        print(f"(written to {args.doc})")


if __name__ == "__main__":
    main()
