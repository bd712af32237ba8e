"""Where a working directory's job server keeps its files, and whether one runs there::

    python -m clipdrift.pipeline.jobs.warm [WORKDIR]

prints the server's folder and log, and the running server's pid (``kill <pid>`` stops it once
its running jobs end), or why jobs there run cold. Changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from clipdrift.pipeline.jobs.warm.client import shared_workdir_reason
from clipdrift.pipeline.jobs.warm.state import LOG_FILE, PID_FILE, StateRefused, location, open_state_folder
from clipdrift.pipeline.jobs.warm.wire import is_running


def describe(workdir: str) -> list[str]:
    folder = location(workdir)
    lines = [f"server folder: {folder}", f"log: {folder / LOG_FILE}"]
    shared = shared_workdir_reason(workdir)
    if shared:
        return [*lines, f"jobs run cold: {shared}"]
    if not folder.exists():
        return [*lines, "no server has run for this working directory"]
    try:
        with open_state_folder(workdir) as opened:
            record = json.loads(opened.read_text(PID_FILE) or "{}")
    except (StateRefused, OSError, ValueError) as error:
        return [*lines, f"jobs run cold: the server's folder cannot be used: {error}"]
    if isinstance(record, dict) and is_running(int(record.get("pid", 0)), int(record.get("ticks", 0))):
        return [*lines, f"running: pid {record['pid']} (fingerprint {record.get('fingerprint')})"]
    return [*lines, "no server running"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdrift.pipeline.jobs.warm", description=__doc__.split("::")[0])
    parser.add_argument("workdir", nargs="?", default=".", help="the study's working directory (default: here)")
    print("\n".join(describe(parser.parse_args(argv).workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
