"""Runs every benchmark script under benchmarks/ (CSV on stdout). Pass --out to write results files."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    failed = []
    for script in sorted(HERE.glob("*/bench_*.py")):
        print(f"## {script.relative_to(HERE)}", flush=True)
        if subprocess.run([sys.executable, str(script), *sys.argv[1:]]).returncode:
            failed.append(script.name)
    sys.exit(f"failed: {failed}" if failed else 0)
