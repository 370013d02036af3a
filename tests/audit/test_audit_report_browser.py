"""The HTML report rendered by a real headless browser (Debian's chromium)."""
from __future__ import annotations

import json
import re
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
    assert headings == ["inputs", "findings", "worklist", "importance", "paper-analyses", "distributions", "anomalies", "cases", "bias",
                        "glossary"]
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


#: Measures the laid-out page from inside the browser and writes the result into the DOM (the report itself has no script).
MEASURE = """<script>
const out = {};
const body = document.body.getBoundingClientRect();
out.viewport = window.innerWidth; out.scrollWidth = document.documentElement.scrollWidth;
out.body = [body.left, body.right];
out.figures = [...document.querySelectorAll('figure img')].map(i => ({alt: i.alt, shown: i.getBoundingClientRect().width, natural: i.naturalWidth}));
out.tables = [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().right);
out.toc = [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'));
out.h2 = [...document.querySelectorAll('h2')].map(h => h.id);
const boxes = [];
const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
while (walk.nextNode()) {
  const n = walk.currentNode; if (!n.textContent.trim()) continue;
  const r = document.createRange(); r.selectNodeContents(n);
  for (const b of r.getClientRects()) if (b.width > 0 && b.height > 0) boxes.push([b.left, b.top, b.right, b.bottom, n.textContent.slice(0, 40)]);
}
const overlaps = [];
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]), h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (w > 1 && h > 1) overlaps.push([a[4], b[4]]);
}
out.textBoxes = boxes.length; out.overlaps = overlaps.slice(0, 10);
const pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
</script>"""


def measure_at_1280(tmp_path, report) -> dict:
    """The report laid out by headless Chromium in a 1280-pixel-wide window, measured by :data:`MEASURE`."""
    page = tmp_path / "measured.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    proc = _chromium(tmp_path, "--window-size=1280,1000", "--dump-dom", page.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="measured">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stdout[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def check_layout(m: dict, figures: dict) -> None:
    """What a reader at 1280 px needs: nothing wider than the window, every figure in the column at a scale where an
    8-point label stays at least 9 pixels high (figures are drawn at 110 dpi: 8 pt = 12.2 px), a table of
    contents that links every section, and no two pieces of text drawn over each other."""
    assert m["viewport"] == 1280 and m["scrollWidth"] <= 1280, m["scrollWidth"]
    left, right = m["body"]
    assert all(r <= right + 1 for r in m["tables"]), (m["tables"], right)
    assert sorted(f["alt"] for f in m["figures"]) == sorted(figures)
    for f in m["figures"]:
        assert f["shown"] <= right - left + 1, f
        assert f["shown"] >= 0.75 * f["natural"], f"{f['alt']}: drawn {f['natural']} px wide, shown at {f['shown']:.0f} px"
    assert m["toc"] == [f"#{h}" for h in m["h2"]] and len(m["h2"]) >= 9
    assert m["textBoxes"] > 100 and m["overlaps"] == [], m["overlaps"]


def test_layout_at_1280_pixels(rendered):
    tmp, outputs, _ = rendered
    check_layout(measure_at_1280(tmp, outputs.report_html), outputs.figures)


@pytest.mark.slow
def test_layout_of_the_published_table_audit_at_1280_pixels(published_table, tmp_path):
    """The page a new user first sees: the published TSV2 table (17 classes, 32 scans)."""
    outputs = run_table_audit(published_table, tmp_path / "out")
    m = measure_at_1280(tmp_path, outputs.report_html)
    check_layout(m, outputs.figures)
    text = outputs.report_html.read_text(encoding="utf-8")
    for expected in ("agg2exp-lightning", "SHA-256 334322e3f54c53c51ef74fbfca6ed18356a7ca46835536b5a9a69b7d67e5dd9a",
                     "--metadata", "Glossary", "forest score", "scan-level score"):
        assert expected in text, expected
    assert "predict == -1" not in text and "kernelshap_spread" not in text  # no scikit-learn talk in prose; no model-only settings
