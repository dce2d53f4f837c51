"""Screenshot of an orch report page with headless Chromium (the README's picture).

    python docs/report_screenshot.py STORE STUDY [--sweep ID] [--out docs/report.png]

Builds the report from the store (orch report), opens it in headless Chromium (Debian's
`chromium`), and saves the top of the page at 1200 px wide.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from orchestrator.report import page as report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("study")
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("report.png"))
    ap.add_argument("--height", type=int, default=1700)
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    rep = report.build(a.store, a.study, a.sweep)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                        f"--window-size=1200,{a.height}", f"--screenshot={a.out.resolve()}", rep.html.as_uri()],
                       check=True, capture_output=True)
    print(f"{rep.html} -> {a.out}")


if __name__ == "__main__":
    main()
