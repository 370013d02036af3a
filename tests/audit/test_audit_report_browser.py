"""The HTML report rendered by a real headless browser (Debian's chromium)."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib.image
import pytest

from agg2exp_lightning.audit.table_audit import run_table_audit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")

SCRIPT = "<script>alert(1)</script>"
EVIL_ID = '"><img src=x onerror=alert(2)>'


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, make_frame):
    tmp = tmp_path_factory.mktemp("report")
    frame = make_frame(100, 8, seed=0, planted_scanner=SCRIPT)
    frame.loc[100, "patient"] = EVIL_ID  # a planted (most anomalous) scan: its id is on the page
    frame.to_csv(tmp / "t.csv", index=False)
    outputs = run_table_audit(tmp / "t.csv", tmp / "out")
    proc = _chromium(tmp, "--dump-dom", outputs.report_html.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    return tmp, outputs, dom


def test_data_strings_show_as_text_not_markup(rendered):
    _, _, dom = rendered
    text = "".join(dom.text)
    assert SCRIPT in text and EVIL_ID in text
    assert not [t for t, _ in dom.tags if t == "script"]
    assert not [a for t, a in dom.tags if t == "img" and a.get("onerror")]


def test_headings_and_figures_present(rendered):
    _, outputs, dom = rendered
    headings = [a.get("id") for t, a in dom.tags if t == "h2"]
    assert headings == ["inputs", "findings", "worklist", "importance", "paper-analyses", "distributions", "anomalies", "cases", "bias"]
    imgs = [a for t, a in dom.tags if t == "img"]
    assert sorted(a["alt"] for a in imgs) == sorted(outputs.figures)
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    text = "".join(dom.text)
    assert "Bias: are the outliers a subgroup?" in text and "scanner" in text


def test_screenshot(rendered):
    tmp, outputs, _ = rendered
    shot = tmp / "report.png"
    proc = _chromium(tmp, f"--screenshot={shot}", "--window-size=1200,2400", outputs.report_html.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels[..., :3].std() > 0.05  # not a blank page
