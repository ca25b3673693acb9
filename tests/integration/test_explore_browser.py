"""The exploration report in a real headless browser (Debian's chromium over the DevTools protocol): it
renders with its title and sections, every plot is drawn with a size, nothing is fetched beyond the
file itself, and the console stays free of errors. Chromium missing is a failure, not a skip."""
from __future__ import annotations

from typer.testing import CliRunner

from cli.app import app
from cli.config import CliSettings
from cli.context import Context
from tests.browser import Browser
from tests.data import FRAUD
from tests.support import fraud_offline_store

EXPRESSIONS = {
    "title": "document.title",
    "h1": "document.querySelector('h1').textContent",
    "sections": "[...document.querySelectorAll('section[id] > h2')].map(h => h.textContent)",
    "inputs": "document.querySelectorAll('section.input').length",
    "svg": "document.querySelectorAll('div.plot > svg').length",
    "drawn": "[...document.querySelectorAll('div.plot > svg')].filter(s => { const r = s.getBoundingClientRect(); "
             "return r.width > 200 && r.height > 100 && s.querySelectorAll('path, rect, text, use').length > 10 "
             "}).length",
    "img": "document.images.length",
    "drift_rows": "document.querySelectorAll('table.drift tbody tr').length",
    "alert_rows": "document.querySelectorAll('table.drift tbody tr.alert').length",
    "version_rows": "document.querySelectorAll('table.versions tbody tr').length",
}


def test_the_report_renders_in_chromium_with_its_plots_and_no_console_errors(tmp_path):
    fraud_offline_store(tmp_path / "offline", 1500, drift_at=750)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["explore", "--offline", str(tmp_path / "offline"), "--registry", "none",
                                      "--out", str(out)], obj=Context(CliSettings()))
    assert result.exit_code == 0, result.output
    inputs = len(FRAUD.features.definitions) + 4  # the features and amount, merchant_category, country, channel
    with Browser() as browser:
        page = browser.open(out.as_uri(), EXPRESSIONS)
        # the harness sees errors: a page with a console error, a thrown exception and a failed load
        bad = tmp_path / "bad.html"
        bad.write_text("<html><body><img src='missing.png'><script>console.error('boom'); "
                       "null.x;</script></body></html>")
        control = browser.open(bad.as_uri(), {"title": "document.title"})
    assert len(control.console_errors) >= 3, control.console_errors
    assert page.console_errors == []
    assert page.requests == [out.as_uri()]  # self-contained: nothing but the file itself
    v = page.values
    assert v["title"] == v["h1"] == "Loopline exploration: fraud"
    assert v["sections"] == ["Overview", "Label over time", "Missing values", "Drift: training window against recent",
                             "Inputs: distribution and relation to the label", "Model versions"]
    assert v["inputs"] == inputs
    assert v["svg"] == v["drawn"] == inputs + 3  # label over time, missing values, PSI; no registry: no versions plot
    assert v["img"] == 0
    assert v["drift_rows"] == inputs and v["alert_rows"] >= 1  # the generator's drift is flagged
    assert v["version_rows"] == 0
