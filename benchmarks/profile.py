"""Profile the extension's request path, in process: where a delivery's time goes.

    python -m benchmarks.profile                       # cProfile, default SQLite log
    python -m benchmarks.profile --tool pyinstrument --log memory --n 5000

Calls the app as a WSGI callable with unique pre-signed 1 KB deliveries (as ``bench`` does),
warms it up, then profiles ``--n`` deliveries. Use ``--workdir /dev/shm/x`` to take the disk's
fsync out of the picture and see the CPU cost alone.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import apps
from .common import DeliveryFactory, base_body, call, environ


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument("--log", choices=("default", "memory"), default="default")
    parser.add_argument("--n", type=int, default=3000, help="deliveries profiled")
    parser.add_argument("--top", type=int, default=40, help="rows of the cProfile tables")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="devhealth-profile-"))
    url = "sqlite://" if args.log == "memory" else None
    try:
        app = apps.create_extension(url, str(workdir / "instance"))
        factory = DeliveryFactory(base_body())
        for _ in range(500):
            call(app, environ(apps.EXTENSION_PATH, factory.make("jwt")))
        envs = [environ(apps.EXTENSION_PATH, factory.make("jwt")) for _ in range(args.n)]
        if args.tool == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0002)
            profiler.start()
            for env in envs:
                call(app, env)
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False))
        else:
            profile = cProfile.Profile()
            profile.enable()
            for env in envs:
                call(app, env)
            profile.disable()
            stats = pstats.Stats(profile)
            stats.sort_stats("cumulative").print_stats(args.top)
            stats.sort_stats("tottime").print_stats(args.top)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
