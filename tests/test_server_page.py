"""The server's web page in a real headless browser (Debian's chromium + chromedriver, selenium): open the page,
give it a wav, wait for the transcript, compare with the CLI's. scripts/test.sh installs the browser when it
is missing; this skips only where it is still not there.

PARAFORMER_EXT_SCREENSHOT=docs/server_page.png also keeps the screenshot there (the README shows it).
"""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import golden_checkpoint, needs_shared

pytest.importorskip("websockets")

from server_helpers import ServerThread, cli_results, make_audio  # noqa: E402

pytestmark = [needs_shared, pytest.mark.slow]


def _browser_paths():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return chrome, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (scripts/setup.sh installs it)")
    chrome, driver_path = _browser_paths()
    if not chrome or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (scripts/test.sh installs them with apt-get as root)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900",
              "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from paraformer_ext import load
    from paraformer_ext.vad import FsmnVad

    s = ServerThread(load(golden_checkpoint("small")), FsmnVad.load())
    yield s
    s.close()


def transcribe_in_page(browser, port, wav, mode):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"http://127.0.0.1:{port}/")
    Select(browser.find_element(By.ID, "mode")).select_by_visible_text(mode)
    browser.find_element(By.ID, "file").send_keys(str(wav))
    browser.find_element(By.ID, "start").click()
    WebDriverWait(browser, 180).until(
        lambda d: d.find_element(By.ID, "status").text in ("done",) or d.find_element(By.ID, "status").text.startswith(("error", "closed")))
    assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "status").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#stamps tbody tr")
    return browser.find_element(By.ID, "final").text, rows


def test_page_transcribes_a_file_like_the_cli(browser, srv, tmp_path):
    audio = make_audio(tmp_path)
    wavs = [audio["asr_example"], audio["two"]]
    offline = cli_results(golden_checkpoint("small"), wavs)
    twopass = cli_results(golden_checkpoint("small"), wavs, "--long-audio-s", "0")
    for wav in wavs:
        key = wav.name.split(".")[0]
        text, rows = transcribe_in_page(browser, srv.server.port, wav, "offline")
        assert text == offline[key]["text"]
        assert len(rows) == len(offline[key].get("segments") or [0])  # one timestamp row per sentence
        # 2pass: the browser decodes the 16-bit wav itself (Web Audio) and streams 16 kHz pcm
        text, rows = transcribe_in_page(browser, srv.server.port, wav, "2pass")
        assert text == twopass[key]["text"]
        assert len(rows) == len(twopass[key]["segments"])
    path = tmp_path / "server_page.png"
    browser.save_screenshot(str(path))
    keep = os.environ.get("PARAFORMER_EXT_SCREENSHOT")
    if keep:
        shutil.copyfile(path, keep)
