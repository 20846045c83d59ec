"""The demo page (``mlsv demo``, mlsv.inference.demo) and its Hugging Face Space (``push_to_hub.py --space``,
mlsv.publish.space): the verdict and plots the page shows, the Space's files, the Space's app serving the page,
and the page driven in a real headless Chromium (upload two recordings, read the decision, screenshot)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, run_cli
from data_helpers import voice

from mlsv.api import Verifier
from mlsv.inference.demo import compare

SR = 16000


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo_audio")
    sf.write(d / "a.wav", voice(0.8, seed=1), SR, subtype="FLOAT")
    sf.write(d / "b.wav", voice(0.7, f0=210, seed=2), SR, subtype="FLOAT")
    return d / "a.wav", d / "b.wav"


def test_the_page_shows_verify_s_decision_and_each_recording_s_layer_attention(model_dir, recordings, tmp_path):
    from mlsv.models import MLSVModel

    a, b = recordings
    v = Verifier.from_pretrained(model_dir)
    out = compare(v, str(a), str(b), tmp_path / "plots")
    expected = v.verify(a, b)
    assert out.result is not None and out.decision == expected.label
    assert out.score == pytest.approx(expected.score, abs=1e-5) and out.result.threshold == expected.threshold
    assert f"{expected.threshold:.4f}" in out.markdown() and expected.scale in out.markdown()
    for plot in out.plots:
        assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    # a model without a threshold: the score on its scale, no decision, and why
    model = MLSVModel.from_pretrained(model_dir)
    model.config.threshold = None
    bare = Verifier(model)
    out = compare(bare, str(a), str(b), tmp_path / "plots2")
    assert out.result is None and out.decision.startswith("no decision")
    assert out.score == pytest.approx(bare.score(a, b), abs=1e-5) and "--threshold" in out.note
    with pytest.raises(ValueError, match="give two recordings"):
        compare(v, str(a), None, tmp_path)


def test_the_demo_names_its_extra_when_gradio_is_missing(model_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    rc, err = run_cli(["demo", "--model", str(model_dir)], capsys)
    assert rc == 2 and 'pip install "mlsv[demo]"' in err


def test_push_space_builds_the_space_beside_the_dry_run(model_dir, tmp_path, capsys):
    from importlib import metadata

    from mlsv.publish.hub import main as push

    out = tmp_path / "pub"
    capsys.readouterr()
    assert push(["--model", str(model_dir), "--repo-id", "me/mlsv-tiny", "--dry-run", str(out), "--space"]) == 0
    printed = capsys.readouterr().out
    space = tmp_path / "pub-space"
    assert f"built the Space me/mlsv-tiny in {space}" in printed
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    assert not (out / "app.py").exists()  # the model repository is unchanged
    readme = (space / "README.md").read_text()
    front = readme.split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front and "  - me/mlsv-tiny" in front
    assert f"sdk_version: {metadata.version('gradio')}" in front
    assert (space / "requirements.txt").read_text() == f"mlsv[demo]=={metadata.version('mlsv')}\n"
    app = (space / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert "from mlsv.inference.demo import launch_demo" in app and '"me/mlsv-tiny"' in app
    # another Space name, checked; a folder holding other files is refused
    assert (
        push(["--model", str(model_dir), "--repo-id", "me/mlsv-tiny", "--dry-run", str(out), "--space", "me/try-it"])
        == 0
    )
    assert "built the Space me/try-it" in capsys.readouterr().out
    assert push(["--model", str(model_dir), "--repo-id", "me/x", "--dry-run", str(out), "--space", "bad name"]) == 2
    assert "--space 'bad name'" in capsys.readouterr().err
    (space / "other.txt").write_text("mine")
    assert push(["--model", str(model_dir), "--repo-id", "me/x", "--dry-run", str(out), "--space"]) == 2
    assert "holds files a Space folder does not (other.txt)" in capsys.readouterr().err


# -- served for real ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict:
    return {
        **os.environ,
        **extra,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }


def _serve(argv: list[str], port: int, log: Path, cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """Starts a demo server and waits (up to 180 s on a busy machine) until it answers on ``port``."""
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=_env(**env), cwd=cwd)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the demo server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the demo server did not answer within 180 s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_the_space_s_app_serves_the_demo_page(model_dir, tmp_path):
    pytest.importorskip("gradio")
    from mlsv.publish.space import build_space_folder

    space = build_space_folder("me/mlsv-tiny", tmp_path / "space")
    port = _free_port()
    log = tmp_path / "space.log"
    proc = _serve([sys.executable, "app.py"], port, log, cwd=space, MLSV_MODEL=str(model_dir), PORT=str(port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.loads(r.read())
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"recording A", "recording B", "decision", "layer attention of A"} <= labels
    finally:
        _stop(proc)


def _chromium():
    """A headless Chromium driven by selenium: Debian's chromium and chromium-driver (nothing downloads a
    browser), with the background networking off (the machine's network is closed) and a new profile."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    flags = "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    flags += " --disable-component-update --disable-sync --window-size=1280,1500"
    for flag in flags.split():
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='mlsv-chromium-')}")
    return webdriver.Chrome(service=Service(driver), options=options)


def _is_blank(png: Path) -> bool:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return pixels.std() < 5.0 or len(np.unique(pixels)) < 16


@pytest.mark.integration
def test_the_demo_page_in_a_real_browser(model_dir, small_corpus, tmp_path):
    """Two recordings of the synthetic corpus uploaded in headless Chromium: the page's decision is the
    model's, and a screenshot of the page (in tmp_path) is not blank."""
    pytest.importorskip("gradio")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rows = [json.loads(line) for line in Path(small_corpus.test).read_text().splitlines()]
    root = Path(small_corpus.test).parent
    a, b = (str(root / rows[i]["path"]) if not os.path.isabs(rows[i]["path"]) else rows[i]["path"] for i in (0, -1))
    expected = Verifier.from_pretrained(model_dir).verify(a, b)
    port = _free_port()
    server = _serve([sys.executable, "-m", "mlsv", "demo", "--model", str(model_dir), "--port", str(port), "--quiet"],
                    port, tmp_path / "demo.log")  # fmt: skip
    browser = None
    try:
        browser = _chromium()
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-b input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#audio-a input[type=file]").send_keys(a)
        browser.find_element(By.CSS_SELECTOR, "#audio-b input[type=file]").send_keys(b)
        for side in ("a", "b"):  # uploaded: a player replaces the drop zone
            wait.until(lambda d, s=side: "Drop Audio Here" not in d.find_element(By.ID, f"audio-{s}").text)
        time.sleep(1.0)
        browser.find_element(By.ID, "verify").click()
        box = (By.CSS_SELECTOR, "#decision textarea, #decision input")
        decision = wait.until(lambda d: d.find_element(*box).get_attribute("value"))
        assert decision == expected.label
        details = wait.until(lambda d: d.find_element(By.ID, "details").text)
        assert f"{expected.score:.4f}" in details and f"{expected.threshold:.4f}" in details
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#layers-a img, #layers-b img")) == 2)
        time.sleep(1.0)
        shot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(shot))
        assert not _is_blank(shot), f"the screenshot {shot} is blank"
    finally:
        if browser is not None:
            browser.quit()
        _stop(server)
