"""Driving ``cbir serve`` from outside, as the browser tests and the serving benchmark do:
start the real command on a free port and wait for it; open headless Chromium on a
closed network (Debian's chromium and chromium-driver, driven by selenium)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

#: Chromium flags for a machine without internet: no background connections, no first-run work.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1500,1000")


def free_port() -> int:
    """A TCP port of 127.0.0.1 free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(arguments: list[str], timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Run ``cbir serve ARGUMENTS --port P`` with this Python and wait until its API answers.

    Returns:
        (the process, its base URL ``http://127.0.0.1:P/``).

    Raises:
        RuntimeError: the server exited or did not answer in ``timeout`` seconds (with its output).
    """
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "cbir.cli", "serve", *arguments, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "api/indexes", timeout=2).read()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"cbir serve did not start: {process.communicate()[0]}") from None
            time.sleep(0.3)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def chromium_installed() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


def headless_chromium():
    """A selenium driver of headless Chromium (``make browser`` installs it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
