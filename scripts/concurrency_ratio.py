"""tempo's per-step wait on its workers with --workers 2 against --workers 1, per transport.

    PYTHONPATH=src python scripts/concurrency_ratio.py [--transports process,dist] [--steps 3] [--hidden 4096,4096,4096]

Both sessions run in this process with their steps interleaved (load from other processes hits both
alike); one torch thread per worker process unless --worker-threads says otherwise.  Prints, per
transport, the median wait per step with 1 and 2 workers and their ratio (see
blindtrain/bench/concurrency.py), then the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json

from blindtrain.bench import concurrency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="process,dist")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", default=",".join(map(str, concurrency.HIDDEN)))
    parser.add_argument("--worker-threads", type=int, default=1)
    args = parser.parse_args()
    result = concurrency.measure(transports=args.transports.split(","), steps=args.steps, warmup=args.warmup,
                                 batch=args.batch, hidden=tuple(int(h) for h in args.hidden.split(",")),
                                 worker_threads=args.worker_threads)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
