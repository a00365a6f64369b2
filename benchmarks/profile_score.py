"""Where a memory-judge score's time goes at large sizes: cProfile over repeated scores of one judge.

Builds the same store as overhead.py (judges of the given sizes in one table, filled through the ledger with
precomputed MiniLM vectors), warms the judge of the largest size, then profiles `--runs` scores of it and prints
the functions with the most cumulative and own time, per score. Run from the repository root:

    .venv/bin/python benchmarks/profile_score.py [--sizes 1000 10000 100000] [--runs 200]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from collections.abc import Sequence

from feedbackqa_data import DEFAULT_DATA
from memalign_mcp.embeddings import LocalMiniLMEmbedder
from memalign_mcp.engine import open_engine
from overhead import fill, log, make_bank, queries, settings_for


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=30, help="functions listed per ordering")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Fill, warm, profile, print."""
    args = parse_args(argv)
    embedder = LocalMiniLMEmbedder()
    embedder.warm()
    bank = make_bank(DEFAULT_DATA, embedder)
    pairs = queries(bank, args.runs)
    with tempfile.TemporaryDirectory(prefix="memalign-profile-") as tmp:
        engine = open_engine(settings_for(tmp, model_url=None), embedder=embedder)
        for n in args.sizes:
            started = time.perf_counter()
            fill(engine, f"fill-{n}", n, bank, seed=n)
            log(f"filled fill-{n}: {time.perf_counter() - started:.1f} s")
        judge = f"fill-{args.sizes[-1]}"
        for q, a in pairs[:10]:
            engine.score(judge, q, a)  # the snapshot build and state replay are paid here, not profiled
        plain: list[float] = []
        for q, a in pairs:
            started = time.perf_counter()
            engine.score(judge, q, a)
            plain.append(time.perf_counter() - started)
        profile = cProfile.Profile()
        for q, a in pairs:
            profile.enable()
            engine.score(judge, q, a)
            profile.disable()
        plain.sort()
        print(
            f"{len(plain)} scores of {judge}: wall p50 {plain[len(plain) // 2] * 1000:.1f} ms without the profiler\n"
        )
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats(order).print_stats(args.top)
            print(f"--- by {order} (seconds over {len(pairs)} scores) ---\n{text.getvalue()}")


if __name__ == "__main__":
    main()
