"""`gateway dlp scan`: findings of any text, values masked, table or one JSON object per line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dlp.cli import scan_command

TEXT = ("Contact jane.doe@acme-corp.com or +44 20 7946 0018.\n"
        "export GITHUB_TOKEN=ghp_R8kLm2Qv7XzT4nWp9bYc3dFh6jKs1uAe5iOo\n")
VALUES = ("jane.doe@acme-corp.com", "+44 20 7946 0018", "ghp_R8kLm2Qv7XzT4nWp9bYc3dFh6jKs1uAe5iOo")


def test_table_from_a_file_masks_the_values(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text(TEXT, encoding="utf-8")
    result = CliRunner().invoke(scan_command, [str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["entity", "score", "part", "source", "span", "value", "recognizer"]
    assert [line.split()[0] for line in lines[1:4]] == ["EMAIL_ADDRESS", "PHONE_NUMBER", "GITHUB_TOKEN"]
    assert "ja********om (22)" in result.output and lines[-1] == f"3 finding(s) in {len(TEXT)} characters"
    assert not any(v in result.output for v in VALUES)


def test_json_from_stdin_one_object_per_line():
    result = CliRunner().invoke(scan_command, ["-", "--format", "json"], input=TEXT)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["entity"], TEXT[r["start"]:r["end"]]) for r in rows] == [
        ("EMAIL_ADDRESS", VALUES[0]), ("PHONE_NUMBER", VALUES[1]), ("GITHUB_TOKEN", VALUES[2])]
    assert set(rows[0]) == {"entity", "score", "part", "source", "start", "end", "recognizer",
                           "stage", "value"}
    assert not any(v in result.output for v in VALUES)


def test_no_findings_and_bad_rules(tmp_path):
    result = CliRunner().invoke(scan_command, ["-"], input="nothing to report here")
    assert result.exit_code == 0 and result.output == "no findings in 22 characters\n"
    bad = tmp_path / "recognizers.yaml"
    bad.write_text("recognizers:\n  - name: EmailRecognizer\n    thresold: 0.5\n", encoding="utf-8")
    result = CliRunner().invoke(scan_command, ["-", "--rules", str(tmp_path)], input="x")
    assert result.exit_code == 1 and f"{bad}:3:" in result.output
