"""`advrobust report`: files written, the comparison printed, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advrobust.cli import main


def test_report_command_writes_html_json_and_cards(
    runs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    code = main(
        [
            "report",
            str(runs_root),
            "--out",
            str(out),
            "--card",
            "--examples",
            "0",
            "--json",
            str(tmp_path / "m.json"),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "report.html").is_file() and (out / "cards" / "standard.md").is_file()
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged == json.loads((out / "report.json").read_text())
    assert merged["schema"] == "advrobust.report/1"
    assert f"report: {out / 'report.html'}" in printed
    assert "compared at linf eps 0.2" in printed


def test_report_command_compares_at_the_eps_given(
    runs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "report",
                str(runs_root / "standard"),
                "--out",
                str(tmp_path),
                "--eps",
                "0.1",
                "--examples",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert "compared at linf eps 0.1" in capsys.readouterr().out


def test_report_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advrobust report: error: no file at") and "\n" not in err
