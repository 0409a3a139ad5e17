#!/usr/bin/env python3
"""What an authority's handler waits for through the lawful-access API:
SubmitRequest, FetchResult, and both together, over gRPC on 127.0.0.1,
against a running `cdrvault access serve`; and, with --count-fsyncs, the
fsyncs the server makes per call (strace attached to the server for the
measured calls only, in a pass of its own: strace slows every system call).

Driven by benches/api_e2e.sh, which makes the data, the principals and
the approved warrant. Needs grpcio and grpcio-tools (pip).

  api_e2e.py --server 127.0.0.1:PORT --token-file F --warrant W --targets-file T
             --from RFC3339 --to RFC3339 [--rounds 5] [--first-number 1]
             [--count-fsyncs PID] [--rust-client PATH]

With --rust-client (the binary of benches/api_client.rs), the targets are
asked in turn through the Python client and through cdrvault's own Rust
client (target by target, the other way round each round; each client's
figures are then over half the calls): the gap between the two is what
the client library adds.
"""

import argparse
import importlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def stubs():
    """The Python modules of proto/cdrvault/v1/lawful_access.proto."""
    from grpc_tools import protoc

    out = pathlib.Path(tempfile.mkdtemp(prefix="cdrvault-api-stubs-"))
    proto = ROOT / "proto"
    code = protoc.main(
        ["protoc", f"-I{proto}", f"--python_out={out}", f"--grpc_python_out={out}",
         str(proto / "cdrvault/v1/lawful_access.proto")]
    )
    if code != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, str(out))
    return (importlib.import_module("cdrvault.v1.lawful_access_pb2"),
            importlib.import_module("cdrvault.v1.lawful_access_pb2_grpc"))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--warrant", required=True)
    p.add_argument("--targets-file", required=True)
    p.add_argument("--from", dest="start", required=True)
    p.add_argument("--to", dest="end", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--first-number", type=int, default=1)
    p.add_argument("--count-fsyncs", type=int, default=0, help="the server's pid")
    p.add_argument("--label", default="")
    p.add_argument("--rust-client", help="the api_client bench binary: the same calls through cdrvault's Rust client")
    p.add_argument("--plain", help="a DuckDB-written zstd Parquet of the same records in clear: the anchor")
    p.add_argument("--truth", help="JSON: each target's number of records in the window")
    p.add_argument("--chdb", help="a directory for a chDB session: the same file through chDB, and a MergeTree "
                                  "sorted by calling number with a bloom-filter skip index on called number")
    a = p.parse_args()

    import grpc

    pb, rpc = stubs()
    token = pathlib.Path(a.token_file).read_text().strip()
    metadata = [("authorization", f"Bearer {token}")]
    targets = [line.strip() for line in open(a.targets_file) if line.strip()]
    stub = rpc.LawfulAccessStub(grpc.insecure_channel(a.server))
    stub.WhoAmI(pb.WhoAmIRequest(), metadata=metadata)  # the connection, warm

    tracer = None
    if a.count_fsyncs:
        trace = tempfile.NamedTemporaryFile(prefix="cdrvault-strace-", delete=False).name
        tracer = subprocess.Popen(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", trace,
                                   "-p", str(a.count_fsyncs)], stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # strace attaches to every thread before the first call

    truth = json.load(open(a.truth)) if a.truth else None
    rust = None
    if a.rust_client:
        rust = subprocess.Popen([a.rust_client, "--server", f"http://{a.server}", "--token-file", a.token_file,
                                 "--warrant", a.warrant, "--from", a.start, "--to", a.end],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    duck = None
    if a.plain:
        import duckdb

        duck = duckdb.connect()
        window = (a.start.replace("T", " ").rstrip("Z"), a.end.replace("T", " ").rstrip("Z"))
        plain = a.plain
        forms = {
            "duckdb OR": f"SELECT * FROM read_parquet('{plain}') WHERE (calling_number = $n OR called_number = $n) "
                         "AND start_time >= $a::TIMESTAMP AND start_time < $b::TIMESTAMP",
            "duckdb UNION": f"SELECT * FROM read_parquet('{plain}') WHERE calling_number = $n "
                            "AND start_time >= $a::TIMESTAMP AND start_time < $b::TIMESTAMP UNION ALL "
                            f"SELECT * FROM read_parquet('{plain}') WHERE called_number = $n AND calling_number <> $n "
                            "AND start_time >= $a::TIMESTAMP AND start_time < $b::TIMESTAMP",
        }
    runners = {name: (lambda q, n: len(duck.execute(q, {"n": n, "a": window[0], "b": window[1]}).fetchall()), q)
               for name, q in (forms.items() if duck else ())}
    if a.chdb:
        from chdb import session

        ch = session.Session(a.chdb)
        ch.query("DROP TABLE IF EXISTS cdr")
        ch.query("CREATE TABLE cdr (record_id String, service String, start_time DateTime64(6), duration_ms Int64, "
                 "calling_number String, called_number String, INDEX called called_number TYPE bloom_filter "
                 "GRANULARITY 1) ENGINE = MergeTree ORDER BY (calling_number, start_time)")
        ch.query(f"INSERT INTO cdr SELECT * FROM file('{a.plain}', Parquet)")
        union = ("SELECT * FROM {t} WHERE calling_number = '{n}' AND start_time >= '{a}' AND start_time < '{b}' "
                 "UNION ALL SELECT * FROM {t} WHERE called_number = '{n}' AND calling_number <> '{n}' "
                 "AND start_time >= '{a}' AND start_time < '{b}'")

        def chdb_rows(query, n):
            # The numbers are digits after a plus sign: spelled into the SQL.
            assert n.lstrip("+").isdigit(), n
            text = str(ch.query(query.format(n=n, a=window[0], b=window[1]), "CSV"))
            return len(text.splitlines())

        runners["chdb Parquet UNION"] = (chdb_rows, union.replace("{t}", f"file('{a.plain}', Parquet)"))
        runners["chdb MergeTree UNION"] = (chdb_rows, union.replace("{t}", "cdr"))
    if a.plain:
        import datafusion

        fusion = datafusion.SessionContext()
        fusion.register_parquet("cdr", a.plain)
        fusion_union = ("SELECT * FROM cdr WHERE calling_number = '{n}' AND start_time >= TIMESTAMP '{a}' "
                        "AND start_time < TIMESTAMP '{b}' UNION ALL SELECT * FROM cdr WHERE called_number = '{n}' "
                        "AND calling_number <> '{n}' AND start_time >= TIMESTAMP '{a}' AND start_time < TIMESTAMP '{b}'")

        def fusion_rows(query, n):
            assert n.lstrip("+").isdigit(), n
            batches = fusion.sql(query.format(n=n, a=window[0], b=window[1])).collect()
            return sum(batch.num_rows for batch in batches)

        runners["datafusion UNION"] = (fusion_rows, fusion_union)
    anchors = {name: [] for name in runners}

    number = a.first_number
    records = 0

    def through_python(number, target):
        t0 = time.perf_counter()
        info = stub.SubmitRequest(pb.SubmitRequestRequest(
            warrant=a.warrant, request_number=number, targets=[target], window_start=a.start,
            window_end=a.end, categories=["traffic"], format=pb.RESULT_FORMAT_JSON), metadata=metadata)
        t1 = time.perf_counter()
        size = sum(len(c.data) for c in stub.FetchResult(pb.FetchResultRequest(request_id=info.request_id),
                                                          metadata=metadata))
        t2 = time.perf_counter()
        assert size == info.bytes, (size, info.bytes)
        return info.records, (t1 - t0) * 1000, (t2 - t1) * 1000

    def through_rust(number, target):
        rust.stdin.write(f"{number} {target}\n")
        rust.stdin.flush()
        line = rust.stdout.readline()
        if not line:
            sys.exit(f"the Rust client stopped (exit status {rust.wait()})")
        found, took_submit, took_fetch = line.split()
        return int(found), float(took_submit), float(took_fetch)

    # Each client's figures: submit, fetch, both.
    python_times, rust_times = ([], [], []), ([], [], [])
    for round_ in range(a.rounds):
        for position, target in enumerate(targets):
            clients = [(through_python, python_times, "python client")]
            if rust and (round_ + position) % 2 == 1:
                # One client a turn: a second asking for the same target
                # would find its pages in the processor's caches.
                clients = [(through_rust, rust_times, "rust client")]
            for ask, times, name in clients:
                found, took_submit, took_fetch = ask(number, target)
                number += 1
                records += found
                if truth is not None:
                    assert found == truth[target], (name, target, found, truth[target])
                if round_ > 0 or a.count_fsyncs:  # the first round warms the caches
                    times[0].append(took_submit)
                    times[1].append(took_fetch)
                    times[2].append(took_submit + took_fetch)
            # The anchors, target by target between cdrvault's calls, so
            # that the machine's noise falls on all alike.
            for name, (run, query) in runners.items():
                t3 = time.perf_counter()
                rows = run(query, target.split(":", 1)[1])
                took = (time.perf_counter() - t3) * 1000
                if truth is not None:
                    assert rows == truth[target], (name, target, rows, truth[target])
                if round_ > 0:
                    anchors[name].append(took)
    submit, fetch, both = python_times

    if tracer:
        tracer.send_signal(2)
        tracer.wait()
        calls = len(targets) * a.rounds
        # Each line: `pid fsync(fd</path>) = 0`. Paths are grouped by their
        # place in the state and key directories, random names folded.
        places = {}
        for m in re.finditer(r"^\d+\s+(fsync|fdatasync)\(\d+<([^>]*)>", open(trace).read(), re.M):
            place = re.sub(r"[0-9a-f]{16,}", "*", m.group(2).replace(str(pathlib.Path(a.token_file).parent), ""))
            place = re.sub(r"(\.\d+)+\.tmp$", ".*.tmp", place)
            places[(m.group(1), place)] = places.get((m.group(1), place), 0) + 1
        total = sum(places.values())
        print(f"RESULT fsyncs {a.label}: {total} fsync+fdatasync over {calls} submit+fetch pairs: "
              f"{total / calls:.1f} per pair")
        for (call, place), count in sorted(places.items(), key=lambda item: -item[1]):
            print(f"  {count / calls:4.1f} per pair  {call} {place}")
        print(f"next-number {number}")
        return
    if rust:
        rust.stdin.close()
        if rust.wait() != 0:
            sys.exit("the Rust client failed")
    clients = [("submit", submit), ("fetch", fetch), ("submit+fetch", both)]
    if rust:
        rust_both = rust_times[2]
        clients += [("rust client submit", rust_times[0]), ("rust client fetch", rust_times[1]),
                    ("rust client submit+fetch", rust_both)]
    for name, values in (*clients, *anchors.items()):
        print(f"RESULT api {a.label} {name}: p50 {statistics.median(values):.1f} ms, "
              f"p99 {percentile(values, 99):.1f} ms, n={len(values)}")
    for name, values in anchors.items():
        print(f"RESULT ratio {a.label} {name} / cdrvault submit+fetch: p50 "
              f"{statistics.median(values) / statistics.median(both):.1f}x, p99 "
              f"{percentile(values, 99) / percentile(both, 99):.1f}x")
        if rust:
            print(f"RESULT ratio {a.label} {name} / cdrvault submit+fetch, rust client: p50 "
                  f"{statistics.median(values) / statistics.median(rust_both):.1f}x, p99 "
                  f"{percentile(values, 99) / percentile(rust_both, 99):.1f}x")
    print(f"records per request: {records / (number - a.first_number):.1f}"
          + (", every answer equal to the truth" if truth is not None else ""))
    print(f"next-number {number}")


if __name__ == "__main__":
    main()
