"""Where HL7 full-ingest time goes: the cost of one group-commit transaction and of
each message in it, and which functions of the core spend it.

With 8 MLLP senders each waiting for its ACK, a group commit holds at most 8 messages, so
throughput is bounded by 8 / (fixed cost per transaction + 8 x cost per message); the file drop
is bounded by the cost per message alone. This prints both costs (unprofiled), then a cProfile
of a large-batch and an 8-message-batch run, as microseconds per message per function.
Run: .venv/bin/python -m bench.hl7_profile [--messages 4000]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from bench.hl7_bench import fresh_database, messages
from cgthub import runtime
from cgthub.hl7 import inbound
from cgthub.store import session_scope

# The rooms of the hot path, by the functions that enter them (cumulative time includes callees).
ROOMS = [
    ("cgthub/hl7/inbound.py", "read", "MSH read for kind and dedupe key"),
    ("cgthub/hl7/ack.py", "answer", "ACK built per message"),
    ("cgthub/archive.py", "store_many", "archive: seal and insert raw messages"),
    ("cgthub/mapping/registry.py", "get_mapper", "mapping lookup"),
    ("cgthub/mapping/compiler.py", "map", "mapping: HL7 terser reads, events built"),
    ("cgthub/hl7v2.py", "parse", "hl7v2.parse (2 per message: MSH read, mapping)"),
    ("cgthub/pipeline.py", "_map_and_apply", "pipeline: map + ledger + projection"),
    ("cgthub/routing.py", "map_unjudged", "routing: sender, market, mapping"),
    ("cgthub/qualification.py", "judge_batch", "qualification.judge_batch"),
    ("cgthub/routing.py", "settle", "qualification: keep verdicts, refuse"),
    ("cgthub/ledger.py", "append_many", "ledger.append_many"),
    ("cgthub/ledger.py", "_preload", "  ledger._preload (heads, dedupe lookups)"),
    ("cgthub/ledger.py", "_chain", "  ledger._chain (hash chain)"),
    ("cgthub/ledger.py", "_write_rows", "  ledger._write_rows"),
    ("cgthub/correlation.py", "preload", "  correlation.preload"),
    ("cgthub/projection.py", "refresh_many", "projection.refresh_many"),
    ("cgthub/store.py", "session_scope", "session_scope (begin/commit)"),
    ("~", "<method 'commit' of 'sqlite3.Connection' objects>", "sqlite3 commit"),
    ("~", "<method 'executemany' of 'sqlite3.Cursor' objects>", "sqlite3 executemany"),
    ("~", "<method 'execute' of 'sqlite3.Cursor' objects>", "sqlite3 execute"),
]


def run(batch: list[bytes], url: str, size: int) -> None:
    for start in range(0, len(batch), size):
        with session_scope(url) as session:
            inbound.apply(session, [inbound.read(m) for m in batch[start : start + size]], "mllp")


def timed(count: int, size: int) -> float:
    batch, url = messages(count), fresh_database(count // 2 + 1)
    started = time.perf_counter()
    run(batch, url, size)
    return time.perf_counter() - started


def profiled(count: int, size: int) -> dict[str, float]:
    batch, url = messages(count), fresh_database(count // 2 + 1)
    profile = cProfile.Profile()
    profile.enable()
    run(batch, url, size)
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    costs: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, _tt, cumulative, _callers) in stats.items():
        for suffix, name, label in ROOMS:
            if filename.endswith(suffix) and function == name:
                costs[label] = costs.get(label, 0.0) + cumulative
    total = sum(v for (f, _l, n), (_c, _n, _t, v, _cl) in stats.items() if n == "run" and f.endswith("hl7_profile.py"))
    costs["total (profiled)"] = total
    return {label: seconds / count * 1e6 for label, seconds in costs.items()}


# Stages timed with a clock around each (no profiler): where the unprofiled time per message goes.
# A stage named with a fourth field runs inside that one, and is taken out of it, so the rows add
# up; what no stage holds (session, pipeline glue, the loop) is printed as the rest.
# `ledger.append_many` holds the correlate/chain pass, its row writes and the projection refresh.
STAGES = [
    ("cgthub.hl7.inbound", "read", "MSH read (parse, type, dedupe key, ACK header)", None),
    ("cgthub.archive", "store_many", "archive: seal and insert raw messages", None),
    ("cgthub.routing", "mapper", "routing: mapper lookup per message", None),
    ("cgthub.routing:RoutedMapper", "map_unjudged", "routing: sender's sites and market", None),
    (
        "cgthub.mapping.compiler:CompiledMapping",
        "map",
        "mapping (parse, select rules, build events)",
        "routing: sender's sites and market",
    ),
    ("cgthub.qualification", "judge_batch", "qualification: judge the batch's events", None),
    ("cgthub.routing:Pending", "settle", "qualification: keep verdicts, refuse", None),
    ("cgthub.ledger:_BatchWriter", "_preload", "ledger: preload heads and dedupe keys", None),
    ("cgthub.ledger:_BatchWriter", "_one", "ledger: correlate and chain, per event", None),
    ("cgthub.ledger:_BatchWriter", "_write_rows", "ledger: insert orders, keys, entries", None),
    ("cgthub.projection", "refresh_many", "projection: fold, update orders, change rows", None),
    ("cgthub.archive", "mark_many", "archive: outcome statuses", None),
    ("sqlalchemy.orm:Session", "commit", "commit (flush, COMMIT, fsync)", None),
    ("cgthub.hl7.inbound", "answer", "ACK built", None),
]
REST = "rest: session, pipeline glue, loop"


def staged(count: int, size: int) -> tuple[dict[str, float], float]:
    """Microseconds per message in each stage (nested stages taken out of their parents), the rest
    no stage holds, and the total, with a clock wrapped around each stage."""
    import importlib

    batch, url = messages(count), fresh_database(count // 2 + 1)  # before the clocks: it enrols orders
    spent: dict[str, float] = {}
    originals = []
    for where, name, label, _within in STAGES:
        module_name, _, class_name = where.partition(":")
        owner = importlib.import_module(module_name)
        owner = getattr(owner, class_name) if class_name else owner
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def clocked(*args, _f=original, _label=label, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - started

        setattr(owner, name, clocked)
    try:
        started = time.perf_counter()
        for start in range(0, len(batch), size):
            with session_scope(url) as session:
                inbound.apply(session, [inbound.read(m) for m in batch[start : start + size]], "mllp")
        total = time.perf_counter() - started
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)
    for _where, _name, label, within in STAGES:
        if within is not None:
            spent[within] = spent.get(within, 0.0) - spent.get(label, 0.0)
    spent[REST] = total - sum(spent.values())
    return {label: seconds / count * 1e6 for label, seconds in spent.items()}, total / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000)
    args = parser.parse_args()
    runtime.tune_gc()
    big = timed(args.messages, 1000) / args.messages
    eight = timed(args.messages // 2, 8) / (args.messages // 2) * 8
    single = timed(args.messages // 4, 1) / (args.messages // 4)
    fixed = max(single - big, 0.0)
    print("HL7 full ingest on SQLite, unprofiled (archive, parse, map, ledger, projection, commit):")
    print(f"  per message (batches of 1000)   {big * 1e6:8.0f} us   -> file drop ceiling {1 / big:8,.0f} msg/s")
    print(f"  per transaction, fixed          {fixed * 1e6:8.0f} us   (batch of 1 minus one message)")
    print(f"  batch of 8 (8 MLLP senders)     {eight * 1e3:8.2f} ms   -> MLLP ceiling      {8 / eight:8,.0f} msg/s")
    stages, total = staged(args.messages, 1000)
    print("\nStages, batches of 1000, timed without a profiler (us per message):")
    for label in [label for _w, _n, label, _in in STAGES] + [REST]:
        print(f"  {label:52}{stages.get(label, 0.0):8.0f}")
    print(f"  {'total, commits included':52}{total:8.0f}")
    large, small = profiled(args.messages, 1000), profiled(args.messages // 2, 8)
    print("\ncProfile, microseconds per message (cumulative, so rooms nest):")
    print(f"  {'':52}{'batch 1000':>12}{'batch 8':>10}")
    for label in [label for _s, _n, label in ROOMS] + ["total (profiled)"]:
        if label in large or label in small:
            print(f"  {label:52}{large.get(label, 0.0):12.0f}{small.get(label, 0.0):10.0f}")


if __name__ == "__main__":
    main()
