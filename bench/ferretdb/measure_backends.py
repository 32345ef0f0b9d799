#!/usr/bin/env python3
"""Measure the task-store query mix against one MongoDB-wire endpoint.

Intended to compare FerretDB 1.24.2 backends (SQLite vs PostgreSQL) — and, for
reference, real MongoDB — for the ``tasks`` collection described in
``DESIGN.md`` ("Storage and state").

What it does, against ``--mongo-url`` (default ``$MONGO_URL``):

1. Drops and re-creates ``<db>.tasks``; loads N task documents (default
   100,000; ~1,000 users, ULID-like string ``_id``) with ``insert_many`` in
   batches. ``--load-budget`` seconds caps the load: if it is exceeded the
   load stops after the current batch and the real N is recorded.
2. Creates the three start-up indexes from the design and times that.
3. Times, over ``--reps`` repetitions each (after warm-up), median and p95 of:
   a) ``find_one({_id})``
   b) ``update_one({_id, status: "pending"}, {$set})`` (conditional transition)
   c) ``update_one({_id}, {$set})`` (_id-only)
   d) ``insert_one``
   e) list: ``find({user_id}).sort(created, -1).skip(0).limit(20)``
   f) list with a ``type`` filter
   g) ``count_documents({user_id})`` (and the plain ``count`` command)
   h) reaper: ``find({status: "processing", updated: {$lt: t}}).limit(100)``
   ``--op-budget`` seconds caps one operation's total time; when it is hit the
   operation stops early (never below ``--min-reps``) and the real rep count
   is reported.
4. Records FerretDB's ``explain`` pushdown flags for the filtered queries.
5. Tests unique indexes on ``(user_id, idempotency_key)``: partial
   (``$exists: true``), sparse and plain; whether each can be created, rejects
   a duplicate key, and accepts several key-less documents of one user.
6. Atomicity check: 20 threads released together by a barrier each run
   ``update_one({_id, status: "pending"}, {$set: {status: "processing"}})`` on
   one fresh document; counts how many report ``modified_count == 1``
   (anything above 1 is a lost-update / double-claim). Repeated ``--trials``
   times; the same for ``find_one_and_update``.

Prints a table and writes everything as JSON (``--json-out``).

Example::

    MONGO_URL=mongodb://127.0.0.1:27218/ \\
        .venv/bin/python bench/ferretdb/measure_backends.py --label sqlite
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TYPES = ("image", "video", "text")
PROVIDERS = {
    "image": [("openai", "gpt-image-1"), ("ark", "seedream-3"), ("stability", "sdxl")],
    "video": [("ark", "seedance-1"), ("runway", "gen-4"), ("kling", "kling-2")],
    "text": [("openai", "gpt-4o-mini"), ("ark", "doubao-pro"), ("anthropic", "claude-haiku")],
}
# status mix of a long-running store: most tasks are finished.
STATUS_WEIGHTS = (("completed", 85), ("failed", 5), ("pending", 9), ("processing", 1))
_PROMPT_TEXT = (
    "a cat sitting on a red sofa in warm afternoon light, photorealistic, 35mm, "
    "shallow depth of field, cinematic colour grading, high detail, soft shadows, "
    "city skyline at dusk with neon reflections on wet asphalt and light rain"
)
WORDS = tuple(_PROMPT_TEXT.split())

INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("user_created", [("user_id", ASCENDING), ("created", DESCENDING)]),
    ("user_type_created", [("user_id", ASCENDING), ("type", ASCENDING), ("created", DESCENDING)]),
    ("status_updated", [("status", ASCENDING), ("updated", ASCENDING)]),
]


def ulid_like(ts: dt.datetime, rng: random.Random) -> str:
    """Return a 26-char Crockford base32 ULID-shaped id (48-bit ms time + 80 random bits)."""
    value = (int(ts.timestamp() * 1000) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def make_prompt(rng: random.Random) -> str:
    """Return a ~100-character prompt."""
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < 100:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:100]


@dataclass
class Corpus:
    """Ids and users remembered from the load so timed ops hit real documents."""

    ids: list[str] = field(default_factory=list)
    pending_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


def make_task(rng: random.Random, now: dt.datetime, n_users: int, status: str | None = None) -> dict[str, Any]:
    """Build one task document shaped like the project's ``tasks`` collection."""
    status = status or rng.choices([s for s, _ in STATUS_WEIGHTS], weights=[w for _, w in STATUS_WEIGHTS])[0]
    if status in ("pending", "processing"):
        # in-flight tasks are recent; about half of the processing ones are "stuck".
        created = now - dt.timedelta(seconds=rng.uniform(0, 3600))
    else:
        created = now - dt.timedelta(seconds=rng.uniform(0, 90 * 86400))
    if status == "processing" and rng.random() < 0.5:
        updated = created + dt.timedelta(seconds=rng.uniform(0, 30))
        created -= dt.timedelta(hours=1)
        updated -= dt.timedelta(hours=1)
    elif status == "pending":
        updated = created
    else:
        updated = created + dt.timedelta(seconds=rng.uniform(1, 600))
    ttype = rng.choice(TYPES)
    provider, model = rng.choice(PROVIDERS[ttype])
    return {
        "_id": ulid_like(created, rng),
        "user_id": f"user-{rng.randrange(n_users)}",
        "type": ttype,
        "status": status,
        "provider": provider,
        "model": model,
        "prompt": make_prompt(rng),
        "created": created,
        "updated": updated,
    }


def load(
    coll: Collection, n: int, n_users: int, batch: int, budget_s: float, rng: random.Random
) -> tuple[Corpus, dict[str, Any]]:
    """Insert up to ``n`` documents with insert_many; stop early if over ``budget_s``."""
    corpus = Corpus(users=[f"user-{k}" for k in range(n_users)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    t0 = time.perf_counter()
    loaded = 0
    batch_times: list[float] = []
    stopped_early = False
    while loaded < n:
        docs = [make_task(rng, now, n_users) for _ in range(min(batch, n - loaded))]
        b0 = time.perf_counter()
        coll.insert_many(docs, ordered=False)
        batch_times.append(time.perf_counter() - b0)
        for d in docs:
            corpus.ids.append(d["_id"])
            if d["status"] == "pending":
                corpus.pending_ids.append(d["_id"])
        loaded += len(docs)
        elapsed = time.perf_counter() - t0
        if loaded % (batch * 20) == 0 or loaded == n:
            print(f"  loaded {loaded:>7}/{n} in {elapsed:7.1f}s", flush=True)
        if elapsed > budget_s and loaded < n:
            stopped_early = True
            print(f"  load budget {budget_s:.0f}s exceeded at {loaded} docs; stopping", flush=True)
            break
    total = time.perf_counter() - t0
    info = {
        "requested_n": n,
        "loaded_n": loaded,
        "stopped_early": stopped_early,
        "batch_size": batch,
        "seconds": round(total, 2),
        "docs_per_s": round(loaded / total, 1),
        "first_batch_ms": round(batch_times[0] * 1000, 1),
        "last_batch_ms": round(batch_times[-1] * 1000, 1),
    }
    return corpus, info


def create_indexes(coll: Collection) -> dict[str, Any]:
    """Create the design's start-up indexes, timing each."""
    out: dict[str, Any] = {}
    for name, keys in INDEXES:
        t0 = time.perf_counter()
        coll.create_index(keys, name=name)
        out[name] = round(time.perf_counter() - t0, 3)
    return out


@dataclass
class OpResult:
    """Timing summary of one operation."""

    name: str
    reps: int
    median_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float
    note: str = ""


def pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def time_op(
    name: str,
    fn: Callable[[int], Any],
    reps: int,
    warmup: int,
    budget_s: float,
    min_reps: int,
    check: Callable[[Any], str] | None = None,
) -> OpResult:
    """Run ``fn(i)`` ``warmup`` + up to ``reps`` times; stop early past ``budget_s``."""
    for i in range(warmup):
        fn(-1 - i)
    samples: list[float] = []
    notes: set[str] = set()
    start = time.perf_counter()
    for i in range(reps):
        t0 = time.perf_counter()
        res = fn(i)
        samples.append((time.perf_counter() - t0) * 1000)
        if check is not None:
            msg = check(res)
            if msg:
                notes.add(msg)
        if len(samples) >= min_reps and time.perf_counter() - start > budget_s:
            notes.add(f"stopped at {len(samples)} reps (op budget {budget_s:.0f}s)")
            break
    s = sorted(samples)
    return OpResult(
        name=name,
        reps=len(s),
        median_ms=round(statistics.median(s), 3),
        p95_ms=round(pct(s, 0.95), 3),
        min_ms=round(s[0], 3),
        max_ms=round(s[-1], 3),
        note="; ".join(sorted(notes)),
    )


def run_timings(
    db: Database, coll: Collection, corpus: Corpus, args: argparse.Namespace, rng: random.Random
) -> list[OpResult]:
    """Time operations (a)–(h)."""
    reps, warm, budget, mn = args.reps, args.warmup, args.op_budget, args.min_reps
    now = dt.datetime.now(dt.UTC)
    pick_ids = rng.sample(corpus.ids, min(len(corpus.ids), reps + warm + 5))
    pend = list(corpus.pending_ids)
    rng.shuffle(pend)
    results: list[OpResult] = []

    def ru() -> str:
        return rng.choice(corpus.users)

    def expect(n: int | None = None, exact: bool = False) -> Callable[[Any], str]:
        def _c(res: Any) -> str:
            if isinstance(res, list):
                got = len(res)
            elif hasattr(res, "modified_count"):
                got = res.modified_count
            elif isinstance(res, int):
                got = res
            else:
                got = 0 if res is None else 1
            if n is not None and ((exact and got != n) or (not exact and got < n)):
                return f"unexpected result count {got}"
            return ""

        return _c

    results.append(
        time_op("a find_one(_id)", lambda i: coll.find_one({"_id": pick_ids[i]}), reps, warm, budget, mn, expect(1))
    )

    def cond_update(i: int) -> Any:
        return coll.update_one(
            {"_id": pend[i + warm], "status": "pending"},
            {"$set": {"status": "processing", "updated": dt.datetime.now(dt.UTC)}},
        )

    results.append(
        time_op("b update_one(_id,status=pending)", cond_update, reps, warm, budget, mn, expect(1, exact=True))
    )

    def id_update(i: int) -> Any:
        return coll.update_one(
            {"_id": pick_ids[i]},
            {"$set": {"updated": dt.datetime.now(dt.UTC), "progress": i}},
        )

    results.append(time_op("c update_one(_id)", id_update, reps, warm, budget, mn, expect(1, exact=True)))

    ins_rng = random.Random(7)

    def ins(i: int) -> Any:
        return coll.insert_one(make_task(ins_rng, now, len(corpus.users), status="pending"))

    results.append(time_op("d insert_one", ins, reps, warm, budget, mn))

    def list_user(i: int) -> Any:
        return list(coll.find({"user_id": ru()}, {"prompt": 0}).sort("created", -1).skip(0).limit(20))

    results.append(time_op("e list user sort created limit 20", list_user, reps, warm, budget, mn, expect(1)))

    def list_user_type(i: int) -> Any:
        return list(
            coll.find({"user_id": ru(), "type": rng.choice(TYPES)}, {"prompt": 0}).sort("created", -1).skip(0).limit(20)
        )

    results.append(time_op("f list user+type sort limit 20", list_user_type, reps, warm, budget, mn, expect(1)))

    results.append(
        time_op(
            "g count_documents(user)",
            lambda i: coll.count_documents({"user_id": ru()}),
            reps,
            warm,
            budget,
            mn,
            expect(1),
        )
    )
    results.append(
        time_op(
            "g2 count command(user)",
            lambda i: db.command("count", coll.name, query={"user_id": ru()})["n"],
            reps,
            warm,
            budget,
            mn,
            expect(1),
        )
    )

    cutoff = now - dt.timedelta(minutes=15)

    def reaper(i: int) -> Any:
        return list(coll.find({"status": "processing", "updated": {"$lt": cutoff}}, {"_id": 1}).limit(100))

    results.append(time_op("h reaper status+updated<t limit 100", reaper, reps, warm, budget, mn, expect(1)))
    return results


def explain_pushdown(db: Database, coll: Collection, corpus: Corpus) -> dict[str, Any]:
    """Ask the server's explain which parts of each query it pushes down."""
    u = corpus.users[0]
    queries: dict[str, dict[str, Any]] = {
        "find _id": {"filter": {"_id": corpus.ids[0]}},
        "find _id+status": {"filter": {"_id": corpus.ids[0], "status": "pending"}},
        "list user sort limit": {"filter": {"user_id": u}, "sort": {"created": -1}, "limit": 20},
        "list user+type sort limit": {"filter": {"user_id": u, "type": "image"}, "sort": {"created": -1}, "limit": 20},
        "reaper": {
            "filter": {"status": "processing", "updated": {"$lt": dt.datetime.now(dt.UTC)}},
            "limit": 100,
        },
    }
    out: dict[str, Any] = {}
    for name, q in queries.items():
        try:
            res = db.command("explain", {"find": coll.name, **q}, verbosity="queryPlanner")
            keep: dict[str, Any] = {k: res[k] for k in ("filterPushdown", "sortPushdown", "limitPushdown") if k in res}
            plan = res.get("queryPlanner", {})
            keep["queryPlanner"] = json.loads(json.dumps(plan, default=str))
            keep["plan_summary"] = plan_summary(plan)
            out[name] = keep
        except PyMongoError as e:
            out[name] = {"error": str(e)}
    return out


def plan_summary(plan: Any) -> str:
    """One-line summary of a FerretDB queryPlanner (PostgreSQL JSON plan or SQLite rows)."""
    p = plan.get("Plan") if isinstance(plan, dict) else None
    if isinstance(p, list):  # SQLite EXPLAIN QUERY PLAN rows
        return " | ".join(str(x).split("detail=")[-1] for x in p)
    parts: list[str] = []
    while isinstance(p, dict):
        node = p.get("Node Type", "?")
        if p.get("Index Name"):
            node += f" using {p['Index Name']}"
        if p.get("Filter") or p.get("Index Cond"):
            node += f" [{p.get('Index Cond') or p.get('Filter')}]"
        parts.append(node)
        kids = p.get("Plans") or []
        p = kids[0] if kids else None
    return " -> ".join(parts) or json.dumps(plan, default=str)[:200]


def idempotency_index_tests(db: Database) -> dict[str, Any]:
    """Unique idempotency-key index variants: does each work, and is it portable?

    Compound ``(user_id, idempotency_key)`` unique with a partial filter, sparse,
    or plain; and a single-field sparse unique index on a combined
    ``"<user_id>:<key>"`` field (``idem``) that is only set when a key is given.
    ``sparse_flag_kept`` says whether the server reports the ``sparse`` option
    back (if not, it was silently ignored).
    """
    compound = [("user_id", 1), ("idempotency_key", 1)]
    variants: dict[str, tuple[list[tuple[str, int]], dict[str, Any], bool]] = {
        "compound_partial_exists": (
            compound,
            {"partialFilterExpression": {"idempotency_key": {"$exists": True}}},
            False,
        ),
        "compound_partial_type_string": (
            compound,
            {"partialFilterExpression": {"idempotency_key": {"$type": "string"}}},
            False,
        ),
        "compound_sparse": (compound, {"sparse": True}, False),
        "compound_plain": (compound, {}, False),
        "single_field_sparse_idem": ([("idem", 1)], {"sparse": True}, True),
    }
    out: dict[str, Any] = {}
    for name, (keys, opts, single) in variants.items():

        def mk(_id: str, user: str, key: str | None, single: bool = single) -> dict[str, Any]:
            d: dict[str, Any] = {"_id": _id, "user_id": user}
            if key is not None:
                d["idempotency_key"] = key
                if single:
                    d["idem"] = f"{user}:{key}"
            return d

        coll = db[f"idem_{name}"]
        coll.drop()
        coll.insert_one(mk("seed", "u0", None))
        r: dict[str, Any] = {}
        try:
            coll.create_index(keys, unique=True, name="user_idem", **opts)
            info = coll.index_information().get("user_idem", {})
            r["created"] = True
            r["index_info"] = {k: v for k, v in info.items() if k not in ("v", "ns")}
            if opts.get("sparse"):
                r["sparse_flag_kept"] = bool(info.get("sparse"))
        except PyMongoError as e:
            r["created"] = False
            r["create_error"] = f"{type(e).__name__}: {str(e).split(', full error')[0]}"
            out[name] = r
            coll.drop()
            continue
        coll.insert_one(mk("k1", "u1", "abc"))
        try:
            coll.insert_one(mk("k2", "u1", "abc"))
            r["duplicate_key_rejected"] = False
        except DuplicateKeyError:
            r["duplicate_key_rejected"] = True
        try:
            coll.insert_one(mk("k3", "u2", "abc"))
            r["same_key_other_user_ok"] = True
        except DuplicateKeyError:
            r["same_key_other_user_ok"] = False
        try:
            coll.insert_one(mk("n1", "u1", None))
            coll.insert_one(mk("n2", "u1", None))
            r["two_keyless_same_user_ok"] = True
        except DuplicateKeyError as e:
            r["two_keyless_same_user_ok"] = False
            r["keyless_error"] = str(e)[:200]
        try:
            coll.insert_one({"_id": "z1", "user_id": "u3", "idempotency_key": None, "idem": None})
            coll.insert_one({"_id": "z2", "user_id": "u3", "idempotency_key": None, "idem": None})
            r["two_explicit_null_same_user_ok"] = True
        except DuplicateKeyError:
            r["two_explicit_null_same_user_ok"] = False
        # the idempotent-create pattern: insert, on duplicate read the existing one
        try:
            coll.insert_one(mk("k4", "u1", "abc"))
            r["insert_then_find_pattern"] = "no duplicate error"
        except DuplicateKeyError:
            found = coll.find_one({"user_id": "u1", "idempotency_key": "abc"})
            r["insert_then_find_pattern"] = "ok" if found and found["_id"] == "k1" else f"found {found}"
        out[name] = r
        coll.drop()
    return out


def atomicity_test(client: MongoClient, coll: Collection, threads: int, trials: int) -> dict[str, Any]:
    """Race ``threads`` conditional pending→processing updates on one document."""

    # warm the connection pool so every thread has its own socket ready.
    def ping() -> None:
        client.admin.command("ping")

    ws = [threading.Thread(target=ping) for _ in range(threads)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()

    out: dict[str, Any] = {"threads": threads, "trials": trials}
    for mode in ("update_one", "find_one_and_update"):
        winners_per_trial: list[int] = []
        errors: list[str] = []
        for t in range(trials):
            doc_id = f"race-{mode}-{t}"
            coll.insert_one({"_id": doc_id, "user_id": "race", "status": "pending", "owner": None})
            barrier = threading.Barrier(threads)
            wins: list[int] = []
            lock = threading.Lock()

            def worker(
                k: int,
                barrier: threading.Barrier = barrier,
                doc_id: str = doc_id,
                mode: str = mode,
                lock: threading.Lock = lock,
                wins: list[int] = wins,
                errors: list[str] = errors,
            ) -> None:
                try:
                    barrier.wait()
                    flt = {"_id": doc_id, "status": "pending"}
                    upd = {"$set": {"status": "processing", "owner": k}}
                    if mode == "update_one":
                        won = coll.update_one(flt, upd).modified_count == 1
                    else:
                        won = coll.find_one_and_update(flt, upd, return_document=ReturnDocument.AFTER) is not None
                    if won:
                        with lock:
                            wins.append(k)
                except PyMongoError as e:  # pragma: no cover - recorded, not raised
                    with lock:
                        errors.append(f"{type(e).__name__}: {str(e)[:120]}")

            ws = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
            for w in ws:
                w.start()
            for w in ws:
                w.join()
            winners_per_trial.append(len(wins))
        out[mode] = {
            "winners_per_trial": winners_per_trial,
            "trials_with_multiple_winners": sum(1 for w in winners_per_trial if w > 1),
            "max_winners": max(winners_per_trial),
            "errors": sorted(set(errors))[:5],
            "error_count": len(errors),
        }
    return out


def server_facts(client: MongoClient, db: Database, coll: Collection) -> dict[str, Any]:
    """Version / backend facts and storage size as reported by the server."""
    facts: dict[str, Any] = {}
    try:
        bi = client.admin.command("buildInfo")
        facts["version"] = bi.get("version")
        facts["ferretdbVersion"] = bi.get("ferretdbVersion")
        facts["ferretdbFeatures"] = json.loads(json.dumps(bi.get("ferretdbFeatures"), default=str))
    except PyMongoError as e:
        facts["buildInfo_error"] = str(e)
    try:
        st = client.admin.command("getParameter", "*")
        facts["backend"] = {k: v for k, v in st.items() if "backend" in k.lower()} or None
    except PyMongoError:
        pass
    try:
        cs = db.command("collStats", coll.name)
        facts["collStats"] = {k: cs.get(k) for k in ("count", "size", "storageSize", "totalIndexSize", "nindexes")}
    except PyMongoError as e:
        facts["collStats_error"] = str(e)
    return facts


def print_table(label: str, results: list[OpResult]) -> None:
    """Print one backend's op table."""
    print(f"\n== {label} ==")
    print(f"{'operation':40} {'reps':>5} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}  note")
    for r in results:
        print(f"{r.name:40} {r.reps:>5} {r.median_ms:>10.2f} {r.p95_ms:>10.2f} {r.max_ms:>10.2f}  {r.note}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mongo-url", default=os.environ.get("MONGO_URL", "mongodb://127.0.0.1:27017/"))
    p.add_argument("--label", default="backend", help="name used in the table and the JSON file")
    p.add_argument("--db", default="bench_ferretdb")
    p.add_argument("-n", "--n", type=int, default=100_000, help="documents to load")
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--batch", type=int, default=1_000, help="insert_many batch size")
    p.add_argument("--load-budget", type=float, default=480.0, help="seconds; stop loading after this")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-reps", type=int, default=10)
    p.add_argument("--op-budget", type=float, default=120.0, help="seconds per timed operation")
    p.add_argument("--threads", type=int, default=20)
    p.add_argument("--trials", type=int, default=20, help="atomicity race trials")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json-out", default=None, help="default: results-<label>.json next to this script")
    p.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the whole measurement for one endpoint."""
    args = parse_args(argv)
    rng = random.Random(args.seed)
    client: MongoClient = MongoClient(
        args.mongo_url, maxPoolSize=max(50, args.threads + 5), serverSelectionTimeoutMS=10_000, tz_aware=True
    )
    db = client[args.db]
    coll = db["tasks"]
    coll.drop()
    print(f"[{args.label}] {args.mongo_url}  loading {args.n} docs (batch {args.batch})", flush=True)
    corpus, load_info = load(coll, args.n, args.users, args.batch, args.load_budget, rng)
    print(f"[{args.label}] load: {load_info}", flush=True)
    idx = create_indexes(coll)
    print(f"[{args.label}] indexes (s): {idx}", flush=True)
    results = run_timings(db, coll, corpus, args, rng)
    print_table(args.label, results)
    pushdown = explain_pushdown(db, coll, corpus)
    for k, v in pushdown.items():
        flags = {f: v.get(f) for f in ("filterPushdown", "sortPushdown", "limitPushdown")}
        print(f"  explain {k:28} {v.get('error', flags)}  plan: {v.get('plan_summary', '')}")
    idem = idempotency_index_tests(db)
    for k, v in idem.items():
        print(f"  unique idx {k:30} {json.dumps({x: y for x, y in v.items() if x != 'index_info'})}")
    race = atomicity_test(client, db["race"], args.threads, args.trials)
    for mode in ("update_one", "find_one_and_update"):
        r = race[mode]
        print(
            f"  race {mode:20} trials with >1 winner: {r['trials_with_multiple_winners']}/{args.trials}"
            f"  max winners {r['max_winners']}  winners/trial {r['winners_per_trial']}"
            f"  errors {r['error_count']}"
        )
    facts = server_facts(client, db, coll)
    out = {
        "label": args.label,
        "mongo_url": args.mongo_url,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "params": {k: v for k, v in vars(args).items() if k != "json_out"},
        "server": facts,
        "load": load_info,
        "index_seconds": idx,
        "ops": [asdict(r) for r in results],
        "explain": pushdown,
        "idempotency_index": idem,
        "atomicity": race,
    }
    path = args.json_out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"results-{args.label}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"[{args.label}] wrote {path}")
    if not args.keep:
        client.drop_database(args.db)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
