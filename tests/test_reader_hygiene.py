"""CSV and path hygiene of the ESC-50 and AudioSet readers: errors name the CSV and the line, a
UTF-8 BOM is read, duplicates and two files for one clip id are refused, and so are filenames that
are absolute or climb out of the audio folder."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.readers import read_audioset, read_esc50
from tests.fixtures_audio import make_audioset, make_esc50
from cache_tools.errors import InputFileError


def _esc_csv(root):
    return root / "meta" / "esc50.csv"


def _edit_esc(root, fn):
    lines = _esc_csv(root).read_text().splitlines()
    _esc_csv(root).write_text("\n".join(fn(lines)) + "\n")


def test_esc50_bom_is_read(tmp_path):
    root = make_esc50(tmp_path / "esc")
    plain = read_esc50(root)
    _esc_csv(root).write_bytes(b"\xef\xbb\xbf" + _esc_csv(root).read_bytes())       # Excel's UTF-8 export
    assert read_esc50(root) == plain


@pytest.mark.parametrize("case, line, message", [
    ("bad_int", 4, r"column 'target' is 'dog', not an integer"),
    ("short_row", 3, r"column 'target' is '', not an integer"),
    ("duplicate", 17, r"1-1000-A-0.wav is listed twice \(first on line 2\)"),
    ("same_id", 17, r"1-1000-A-0.flac and 1-1000-A-0.wav \(line 2\) map to one clip id '1-1000-A-0'"),
    ("absolute", 5, r"filename '/etc/hosts' is absolute"),
    ("climbs", 6, r"filename '../meta/esc50.csv' climbs out of"),
    ("climbs_inside", 6, r"filename 'sub/../../x.wav' climbs out of"),
])
def test_esc50_bad_rows_name_csv_and_line(tmp_path, case, line, message):
    root = make_esc50(tmp_path / "esc")

    def edit(lines):
        first = lines[1].split(",")
        if case == "bad_int":
            row = lines[3].split(",")
            lines[3] = ",".join([*row[:2], "dog", *row[3:]])
        elif case == "short_row":
            lines[2] = lines[2].split(",")[0]
        elif case == "duplicate":
            lines.append(lines[1])
        elif case == "same_id":
            lines.append(",".join(["1-1000-A-0.flac", *first[1:]]))
        elif case == "absolute":
            lines[4] = ",".join(["/etc/hosts", *lines[4].split(",")[1:]])
        elif case in ("climbs", "climbs_inside"):
            name = "../meta/esc50.csv" if case == "climbs" else "sub/../../x.wav"
            lines[5] = ",".join([name, *lines[5].split(",")[1:]])
        return lines

    _edit_esc(root, edit)
    with pytest.raises(InputFileError, match=f"^{re.escape(str(_esc_csv(root)))}:{line}: {message}"):
        read_esc50(root)


def test_audioset_csv_bom_rows_and_ambiguous_files(tmp_path):
    root = tmp_path / "as"
    make_audioset(root)
    labels = root / "class_labels_indices.csv"
    segs = root / "eval_segments.csv"
    plain = read_audioset(root, split="eval")
    for f in (labels, segs):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    assert read_audioset(root, split="eval") == plain                       # BOM in both CSVs

    text = segs.read_text(encoding="utf-8-sig")
    segs.write_text(text + 'Ev1, 1.000, 11.000, "/m/09x0r"\n')               # line 5: the segment again
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(segs))}:5: segment Ev1_1.000 listed twice \(first on line 4\)"):
        read_audioset(root, split="eval")
    segs.write_text(text + 'Ev2, ten, 20.0, "/m/09x0r"\n')
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(segs))}:5: start / end 'ten', '20.0' are not numbers"):
        read_audioset(root, split="eval")
    segs.write_text(text)

    (root / "audio" / "Ev1_1.000_11.000.flac").write_bytes((root / "audio" / "Ev1_1.000_11.000.wav").read_bytes())
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(segs))}:4: 2 files map to segment Ev1 at 1 s: .*flac, .*wav"):
        read_audioset(root, split="eval")                                   # two files, one clip id

    lines = labels.read_text(encoding="utf-8-sig").splitlines()
    labels.write_text("\n".join([*lines, f"5,{lines[1].split(',')[1]},Again"]) + "\n")
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(labels))}:7: mid /m/09x0r is listed twice \(first on line 2\)"):
        read_audioset(root, split="eval")


def test_audioset_manifest_paths_and_ids(tmp_path):
    root = tmp_path / "as"
    make_audioset(root)
    man = root / "train.json"

    def read(items):
        man.write_bytes(b"\xef\xbb\xbf" + json.dumps({"data": items}).encode())   # BOM accepted here too
        return read_audioset(root, manifest=man)

    assert [r.clip_id for r in read([{"wav": "audio/Plain01.wav", "labels": "/m/04rlf"}]).records] == ["Plain01"]
    with pytest.raises(InputFileError, match=r"data\[0\]: '../as/audio/Plain01.wav' climbs out"):
        read([{"wav": "../as/audio/Plain01.wav", "labels": "/m/04rlf"}])
    with pytest.raises(InputFileError, match=r"data\[1\]: audio/sub/Plain01.wav and audio/Plain01.wav \(data\[0\]\) "
                                         r"map to one clip id 'Plain01'"):
        read([{"wav": "audio/Plain01.wav", "labels": "/m/04rlf"}, {"wav": "audio/sub/Plain01.wav", "labels": "/m/04rlf"}])
