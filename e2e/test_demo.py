"""`ssegate demo` in a real browser: the page shows fan-out, the app's hidden drops, heartbeats,
an exact resume after "cut my connection", and a gap event after "stop the app for 5 s", beside
the same app read directly. The scenario is e2e/clients/demo.mjs (Chromium through
playwright-core); it saves a screenshot, which DEMO_SCREENSHOT=path also copies there (the README's
docs/demo.png is made this way)."""

import os
import shutil
import subprocess

from conftest import HERE, SSEGATE, Proc, free_port, wait_port


def test_the_demo_page_shows_what_ssegate_does(procs, tmp_path):
    port = free_port()
    Proc(procs, "demo", [SSEGATE, "demo", "--listen", f"127.0.0.1:{port}"])
    wait_port(port)
    screenshot = os.path.join(str(tmp_path), "demo.png")
    run = subprocess.run(
        ["node", os.path.join(HERE, "clients", "demo.mjs"), f"http://127.0.0.1:{port}/", screenshot],
        cwd=HERE, capture_output=True, text=True, timeout=180)
    print(run.stdout)
    assert run.returncode == 0, f"the demo page did not show what it promises:\n{run.stdout}\n{run.stderr}"
    assert os.path.getsize(screenshot) > 10_000
    if os.environ.get("DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["DEMO_SCREENSHOT"])
