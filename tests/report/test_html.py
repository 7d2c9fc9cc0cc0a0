"""The HTML file: self-contained, every image decodes, the tables hold the JSON's numbers; the gallery."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
from PIL import Image

from advrobust.report import Report
from advrobust.report.examples import decode_png


class _Collector(HTMLParser):
    """Tags with their attributes, and the cells of each table row."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[tuple[dict[str, str | None], list[tuple[dict[str, str | None], str]]]] = []
        self._cell: tuple[dict[str, str | None], list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append((dict(attrs), []))
        elif tag in ("td", "th"):
            self._cell = (dict(attrs), [])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1][1].append((self._cell[0], "".join(self._cell[1]).strip()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1].append(data)


def _parse(report: Report) -> tuple[str, _Collector]:
    text = report.html_path.read_text(encoding="utf-8")
    collector = _Collector()
    collector.feed(text)
    return text, collector


def test_html_is_self_contained(report: Report) -> None:
    text, parsed = _parse(report)
    assert not [t for t, _ in parsed.tags if t in ("script", "iframe", "object", "embed")]
    for tag, attrs in parsed.tags:
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:"), (
                f"<{tag} {name}={value[:40]!r}> leaves the file"
            )
    assert "@import" not in text and "@font-face" not in text
    assert not re.search(r"url\((?!data:)", text)


def test_every_image_is_a_decodable_png(report: Report) -> None:
    _, parsed = _parse(report)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) >= 4 + 3 * 3 * 2  # four figures, three images per example, three examples, two models
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert (image.width, image.height) == (int(attrs["width"] or 0), int(attrs["height"] or 0))
        assert attrs.get("alt")


def _cells(parsed: _Collector, **row_attrs: str) -> list[tuple[dict[str, str | None], str]]:
    for attrs, cells in parsed.rows:
        if all(attrs.get(k.replace("_", "-")) == v for k, v in row_attrs.items()):
            return cells
    raise AssertionError(f"no row with {row_attrs}")


def test_summary_table_holds_the_headline_numbers(
    report: Report, runs_json: dict[str, dict[str, Any]]
) -> None:
    _, parsed = _parse(report)
    for name in ("standard", "bitdepth"):
        cells = _cells(parsed, data_model=name)
        result = runs_json[name]["results"][-1]  # eps 0.2, the headline
        clean, robust = cells[2], cells[3]
        assert float(clean[0]["data-value"] or "nan") == result["clean"]["value"]
        assert float(robust[0]["data-value"] or "nan") == result["robust"]["value"]
        assert clean[1].startswith(f"{100 * result['clean']['value']:.1f}%")
        assert robust[1] == (
            f"{100 * result['robust']['value']:.1f}% "
            f"[{100 * result['robust']['ci_low']:.1f}, {100 * result['robust']['ci_high']:.1f}]"
        )
    assert _cells(parsed, data_model="bitdepth")[-1][1] == runs_json_audit_status(report)


def runs_json_audit_status(report: Report) -> str:
    return str(report.data.model("bitdepth").audits[0]["status"])


def test_results_table_has_every_attack_of_every_eps(
    report: Report, runs_json: dict[str, dict[str, Any]]
) -> None:
    _, parsed = _parse(report)
    for result in runs_json["standard"]["results"]:
        eps = result["threat"]["eps"]
        row = _cells(parsed, data_model="standard", data_eps=repr(float(eps)))
        values = [float(a["data-value"] or "nan") for a, _ in row if a.get("data-value")]
        expected = [
            result["clean"]["value"],
            *(a["accuracy"]["value"] for a in result["attacks"]),
            result["robust"]["value"],
        ]
        assert values == expected


def test_per_class_table_matches_the_per_sample_results(
    report: Report, runs_json: dict[str, dict[str, Any]]
) -> None:
    _, parsed = _parse(report)
    run = runs_json["bitdepth"]
    labels = np.array(run["meta"]["data"]["labels"])
    robust = np.array(run["results"][-1]["per_sample"]["robust_correct"])
    for k in range(10):
        cells = _cells(parsed, data_class=str(k))
        # Columns: class, then clean and robust per model in report order.
        index = [m.name for m in report.data.models].index("bitdepth")
        cell = cells[2 + 2 * index][0]
        assert int(cell["data-correct"] or -1) == int(robust[labels == k].sum())
        assert int(cell["data-total"] or -1) == int((labels == k).sum())


def test_gallery_examples_stay_in_the_threat_model_and_report_what_the_model_says(report: Report) -> None:
    for entry in report.data.models:
        assert len(entry.examples) == 3
        for ex in entry.examples:
            original = decode_png(ex["original"]).astype(np.float64) / 255
            adversarial = decode_png(ex["adversarial"]).astype(np.float64) / 255
            assert original.shape == adversarial.shape == (28, 28)
            # PNG rounds each pixel to 1/255: the stored images keep the eps-ball up to that rounding.
            assert np.abs(adversarial - original).max() <= ex["eps"] + 1 / 255 + 1e-9
            assert 0 < ex["perturbation_norm"] <= ex["eps"] + 1e-6
            assert ex["fooled"] == (ex["adv_pred"] != ex["label_name"])
            assert 0 < ex["clean_confidence"] <= 1 and 0 < ex["adv_confidence"] <= 1
    standard = report.data.model("standard")
    # Samples the attacks broke come first, one per class where possible.
    assert standard.examples[0]["fooled"]
    # A sample that withstood every attack is shown with the first attack that moves it (the evaluation ran
    # FGSM then PGD-5 at each eps; FGSM's gradient through the bit-depth reduction is zero).
    headline = report.headline
    assert headline is not None
    standing = 0
    for entry in report.data.models:
        result = entry.by_eps(headline.norm)[headline.eps].result
        for ex in entry.examples:
            if result.robust_correct[ex["index"]]:
                standing += 1
                expected = "pgd-5" if entry.name == "bitdepth" else "fgsm"
                # (A replay draws another random start than the batch did, so it may fool the image.)
                assert ex["attack"] == expected, (entry.name, ex["attack"])
    assert standing > 0


def test_audit_and_provenance_are_shown(report: Report) -> None:
    text, _ = _parse(report)
    audit = report.data.model("bitdepth").audits[0]
    assert audit["verdict"] in text.replace("&#x27;", "'")
    for check in audit["checks"]:
        assert f"<td>{check['name']}</td>" in text
    standard = report.data.model("standard")
    assert standard.weights_sha256 is not None and standard.weights_sha256 in text
    sha = standard.runs[0]["meta"]["data"]["source"]["sha256"]
    assert sha in text
    assert "torch " + standard.runs[0]["meta"]["environment"]["torch"] in text
