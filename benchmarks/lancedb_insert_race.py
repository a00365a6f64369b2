"""Is LanceDB's merge_insert insert-if-absent exclusive between processes, with and without an index on the key?

store.py commits a change by inserting its commit row `c:<judge>:<seq>` with
`merge_insert("id").when_not_matched_insert_all()` and trusts `num_inserted_rows` to say whether this writer
won the number. This measures that promise on its own, with nothing of the engine: several processes race to
insert the same keys (each write also carries one unique row, as a change carries its data rows) into a table
whose key column has no index, a B-tree index, or a B-tree index followed by optimize() (compaction and index
update, what the store's housekeeping does). Every extra row of a contested key is a writer that was told it
won a number another writer also won. With `--s3` the table lives in a local S3 server (moto, serialised so that
its conditional PUT is atomic as S3's is; tests/s3_server.py) instead of a temporary directory; the variant
"no primary key" leaves out the table's unenforced primary key, which the store always declares. Run from the
repository root:

    .venv/bin/python benchmarks/lancedb_insert_race.py [--processes 4] [--keys 60] [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb  # pyright: ignore[reportMissingTypeStubs]
import pyarrow as pa
from lancedb.index import BTree  # pyright: ignore[reportMissingTypeStubs]

# "btree, merge without index": the index exists but the merge is told not to use it (what MemoryStore.commit does).
VARIANTS = ("no index", "btree", "btree+optimize", "btree, merge without index", "no primary key")
SCHEMA: Any = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("who", pa.string())])


def writer(
    uri: str, me: str, keys: list[str], out: str, start: float, use_index: bool, options: dict[str, str]
) -> None:
    """Insert-if-absent each key once, together with a unique row; write the keys this writer was told it won."""
    db: Any = lancedb.connect(uri, read_consistency_interval=timedelta(0), storage_options=options)
    table: Any = db.open_table("t")
    while time.time() < start:  # start together, so that the writes overlap
        time.sleep(0.001)
    won: list[str] = []
    for key in keys:
        rows = [{"id": f"r:{uuid.uuid4().hex}", "who": me}, {"id": key, "who": me}]
        result = (
            table.merge_insert("id")
            .when_not_matched_insert_all()
            .use_index(use_index)
            .execute(pa.Table.from_pylist(rows, schema=SCHEMA))
        )
        if int(result.num_inserted_rows) == len(rows):
            won.append(key)
    Path(out).write_text(json.dumps(won), encoding="utf-8")


def race(variant: str, processes: int, keys: int, s3: Any = None) -> dict[str, Any]:
    """One race on a fresh table; the rows each contested key ended with and what the writers were told."""
    tmp = tempfile.mkdtemp(prefix="memalign-race-")
    uri: str = s3.new_prefix() if s3 is not None else tmp
    options: dict[str, str] = s3.storage_options() if s3 is not None else {}
    db: Any = lancedb.connect(uri, storage_options=options)
    table: Any = db.create_table("t", schema=SCHEMA)
    if variant != "no primary key":
        table.set_unenforced_primary_key("id")
    table.add(pa.Table.from_pylist([{"id": f"pre-{i}", "who": "pre"} for i in range(50)], schema=SCHEMA))
    if variant not in ("no index", "no primary key"):
        table.create_index("id", config=BTree(), replace=True)
    if variant == "btree+optimize":
        for i in range(20):  # small fragments, as single-change commits make
            table.add(pa.Table.from_pylist([{"id": f"more-{i}", "who": "pre"}], schema=SCHEMA))
        table.optimize()
    contested = [f"c:{i:04d}" for i in range(keys)]
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3.0
    outs = [f"{tmp}/won-{i}.json" for i in range(processes)]
    workers = [
        context.Process(
            target=writer,
            args=(uri, f"p{i}", contested, outs[i], start, variant != "btree, merge without index", options),
        )
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    told = sum(len(json.loads(Path(o).read_text(encoding="utf-8"))) for o in outs)
    # A new handle: the first one does not see other writers.
    fresh: Any = lancedb.connect(uri, storage_options=options).open_table("t")
    ids: list[str] = (
        fresh.search().where("id LIKE 'c:%'").select(["id"]).limit(None).to_arrow().column("id").to_pylist()
    )
    return {
        "variant": variant,
        "processes": processes,
        "contested_keys": keys,
        "rows_of_contested_keys": len(ids),
        "keys_won_twice_or_more": len(ids) - len(set(ids)),
        "writes_told_they_won": told,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Race once per variant and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--s3", action="store_true", help="race in a local S3 server instead of a directory")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        s3: Any = None
        if args.s3:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from object_store import running_object_store

            s3 = stack.enter_context(running_object_store(Path(tempfile.mkdtemp()) / "s3.log"))
        table(args, s3)


def table(args: argparse.Namespace, s3: Any) -> None:
    """Race once per variant, printing a Markdown row each."""
    print(
        "| key column | writers | contested keys | rows of those keys | keys won by 2+ writers | writes told they won |"
    )
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        r = race(variant, args.processes, args.keys, s3)
        print(
            f"| {variant} | {r['processes']} | {r['contested_keys']} | {r['rows_of_contested_keys']} | "
            f"{r['keys_won_twice_or_more']} | {r['writes_told_they_won']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
