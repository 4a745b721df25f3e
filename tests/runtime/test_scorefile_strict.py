"""The score-file reader is strict: anything but UTF-8 text, 0/1 labels and decimal scores is a one-line
``ScoreFileError`` naming the file and the line (exit 2 through the CLI), never a number read wrong nor an
internal error. NaN and inf scores are still read: they fail the gate later, with the images named.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgedeploy.cli import main
from edgedeploy.core.errors import EdgeDeployError
from edgedeploy.runtime.scorefile import ScoreFileError, ScoreRow, ScoreTable, read_scores, write_scores

HEAD = "# edgedeploy-scores: 1\n# bench: mine\npath,category,label,score\n"  # rows start at line 4


def _rows(n: int = 6) -> str:
    return "".join(f"part/{i:03d}.png,part,{i % 2},{0.1 * i + 0.05 * (i % 2)!r}\n" for i in range(n))


def _file(path: Path, body: str | None = None, raw: bytes | None = None) -> Path:
    path.write_bytes(raw if raw is not None else (HEAD + (body if body is not None else _rows())).encode("utf-8"))
    return path


def test_a_byte_order_mark_is_accepted(tmp_path):
    plain = read_scores(_file(tmp_path / "plain.csv"))
    bom = read_scores(_file(tmp_path / "bom.csv", raw=b"\xef\xbb\xbf" + (HEAD + _rows()).encode()))
    assert bom.meta == plain.meta == {"edgedeploy-scores": "1", "bench": "mine"} and bom.rows == plain.rows


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_latin1_byte_is_named_with_its_line(tmp_path, bom):
    text = HEAD + _rows().replace("part/003.png", "part/caf\xe9.png")
    path = _file(tmp_path / "latin1.csv", raw=bom + text.encode("latin-1"))
    with pytest.raises(ScoreFileError, match=r"latin1\.csv line 7: byte 0xe9 is not UTF-8; save the file as UTF-8"):
        read_scores(path)


@pytest.mark.parametrize("score", ["1_0", "0x1", "1e", ".", "e5", "--1", "1.0.0", "\u0661", "0.5\t", "nan(1)", ""])
def test_a_score_float_would_take_or_bend_is_refused(tmp_path, score):
    path = _file(tmp_path / "s.csv", _rows(2) + f"part/x.png,part,0,{score}\n")
    with pytest.raises(ScoreFileError, match=r"s\.csv line 6: score '.*' of part/x\.png is not a number"):
        read_scores(path)


@pytest.mark.parametrize("label", ["2", "-1", "1.0", "1_0", "+1", "01", "", "one"])
def test_a_label_that_is_not_0_or_1_is_named_with_file_line_and_value(tmp_path, label):
    path = _file(tmp_path / "l.csv", _rows(3) + f"part/x.png,part,{label},0.5\n")
    message = f"l.csv line 7: label {label!r} of part/x.png: label must be 0 (normal) or 1 (anomalous)"
    with pytest.raises(ScoreFileError, match=re.escape(message)):
        read_scores(path)


def test_ascii_spaces_around_label_and_score_are_stripped_and_the_spellings_repr_writes_are_read(tmp_path):
    scores = ["  0.25 ", "1e-05", "-3.5e+200", "1.", ".5", "+7", "nan", "NaN", "-nan", "inf", "+inf", "-inf",
              "Infinity", "-INFINITY"]
    body = "".join(f"p/{i}.png,p, {i % 2} ,{s}\n" for i, s in enumerate(scores))
    got = [row.score for row in read_scores(_file(tmp_path / "s.csv", body)).rows]
    want = [float(s) for s in scores]
    assert [repr(g) for g in got] == [repr(w) for w in want]
    assert [row.label for row in read_scores(tmp_path / "s.csv").rows] == [i % 2 for i in range(len(scores))]
    tab = _file(tmp_path / "tab.csv", "p/0.png,p,\t0,0.5\n")
    with pytest.raises(ScoreFileError, match=r"tab\.csv line 4: label '\\t0'"):
        read_scores(tab)


def test_extreme_floats_and_unicode_paths_round_trip(tmp_path):
    values = [5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1e-05, -0.0,
              2.2250738585072014e-308, float("nan"), float("inf"), float("-inf")]
    rows = [ScoreRow(f"caf\u00e9/line\u2028{i}.png", "caf\u00e9", i % 2, v) for i, v in enumerate(values)]
    write_scores(tmp_path / "s.csv", ScoreTable({"bench": "mine"}, rows))
    back = read_scores(tmp_path / "s.csv")
    assert back.meta == {"edgedeploy-scores": "1", "bench": "mine"}
    assert [(r.path, r.category, r.label) for r in back.rows] == [(r.path, r.category, r.label) for r in rows]
    assert [r.score.hex() for r in back.rows] == [v.hex() for v in values]  # bit for bit, the sign of -0.0 too


def test_other_breakage_is_still_a_score_file_error(tmp_path):
    cases = {
        "cr.csv": ("part/0.png,part,0,0.5\rpart/1.png,part,1,0.6\n", r"cr\.csv line 4: new-line character"),
        "cols.csv": ("part/0.png,part,0\n", r"cols\.csv line 4: expected 4 columns, got 3"),
        "blank.csv": ("part/0.png,part,0,0.5\n\npart/1.png,part,1,0.6\n", r"blank\.csv line 5: expected 4 columns"),
        "dup.csv": ("a.png,p,0,0.1\nb.png,p,1,0.2\na.png,p,0,0.3\n", r"duplicate rows for a\.png \(line 6\)"),
    }
    for name, (body, message) in cases.items():
        with pytest.raises(ScoreFileError, match=message):
            read_scores(_file(tmp_path / name, body))
    crlf = read_scores(_file(tmp_path / "crlf.csv", raw=(HEAD + _rows()).replace("\n", "\r\n").encode()))
    assert crlf.rows == read_scores(_file(tmp_path / "lf.csv")).rows
    assert issubclass(ScoreFileError, EdgeDeployError) and ScoreFileError.exit_code == 2


BAD = {
    "latin-1 byte": ((HEAD + _rows()).replace("part/003.png", "part/caf\xe9.png").encode("latin-1"),
                     "line 7: byte 0xe9 is not UTF-8"),
    "underscore score": ((HEAD + _rows()).replace("part,0,0.0\n", "part,0,1_0\n").encode(),
                         "line 4: score '1_0' of part/000.png is not a number"),
    "label 2": ((HEAD + _rows()).replace("part/003.png,part,1", "part/003.png,part,2").encode(),
                "line 7: label '2' of part/003.png: label must be 0 (normal) or 1 (anomalous)"),
}


@pytest.mark.parametrize("side", ["host", "device"])
@pytest.mark.parametrize("case", BAD)
def test_the_cli_exits_2_in_one_line_for_a_bad_host_or_device_file(tmp_path, side, case):
    good = _file(tmp_path / "good.csv")
    bad = _file(tmp_path / "bad.csv", raw=BAD[case][0])
    host, device = (bad, good) if side == "host" else (good, bad)
    result = CliRunner().invoke(main, ["fidelity", "--host-scores", str(host), "--device-scores", str(device),
                                       "--report", str(tmp_path / "r"), "--no-plots"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad} {BAD[case][1]}"), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


def test_the_cli_reads_a_bom_file_and_a_nan_host_score_means_a_broken_reference(tmp_path):
    good = _file(tmp_path / "good.csv")
    bom = _file(tmp_path / "bom.csv", raw=b"\xef\xbb\xbf" + (HEAD + _rows()).encode())
    ok = CliRunner().invoke(main, ["fidelity", "--host-scores", str(bom), "--device-scores", str(good),
                                   "--report", str(tmp_path / "ok"), "--no-plots"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    rows = _rows().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",nan"
    nan_host = _file(tmp_path / "nan.csv", "\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["fidelity", "--host-scores", str(nan_host), "--device-scores", str(good),
                                       "--report", str(tmp_path / "r"), "--no-plots"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output  # a progress line says which files were read, then the one-line error
    assert result.output.strip().splitlines()[1:] == [
        "error: host scores are NaN or inf for part/003.png: the reference model itself is broken on these images"]
