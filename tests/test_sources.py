"""sources.csv / optout.csv: good files parse, each kind of malformed row is rejected naming its row."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.curate.sources import ManifestError, load_optout, load_sources
from pipeline.ids import video_id_from_url
from pipeline.paths import DataRoot

REPO = Path(__file__).resolve().parents[1]
GOOD = "https://example.org/a.mp4,vid_a,CC-BY 4.0,first\n"


def _write(tmp_path, text: str, name: str = "sources.csv", mode: str = "w") -> Path:
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_good_sources_parse(tmp_path):
    p = _write(tmp_path, "\ufeffurl,video_id,license,note\n"
                         "# a comment line\n"
                         + GOOD +
                         "\n"
                         'HTTP://Example.ORG/Path/B.mp4?x=1,,CC0,"note, with comma"\n'
                         "https://www.youtube.com/watch?v=dQw4w9WgXcQ,,unknown,\n")
    s = load_sources(p)
    assert [x.row for x in s] == [3, 5, 6]
    assert s[0].video_id == "vid_a" and s[0].id_given and s[0].license == "CC-BY 4.0"
    assert s[1].url == "http://example.org/Path/B.mp4?x=1"          # scheme/host lower-cased, path kept
    assert s[1].video_id == video_id_from_url(s[1].url) and not s[1].id_given
    assert s[1].note == "note, with comma"
    assert s[2].video_id == "dQw4w9WgXcQ"
    # Only the url column is required.
    assert load_sources(_write(tmp_path, "url\nhttps://h.example/x\n", "min.csv"))[0].license == ""


def test_hostile_ids_are_kept_raw_and_made_safe(tmp_path):
    hostile = ["../../etc/passwd", "a;rm -rf ~ `x` $(y)", "x" * 400, ".hidden", "..", "C:\\win\\sys"]
    rows = "".join(f'https://h.example/{i},"{v}",,\n' for i, v in enumerate(hostile))
    srcs = load_sources(_write(tmp_path, "url,video_id,license,note\n" + rows))
    root = DataRoot.of(tmp_path / "data")
    assert [s.video_id for s in srcs] == hostile
    assert len({s.safe_id for s in srcs}) == len(hostile)
    for s in srcs:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", s.safe_id) and len(s.safe_id) <= 80
        assert root.root in root.path("media", s.safe_id + ".mp4").parents


BAD_SOURCES = [
    ("ftp://h.example/v.mp4,x,,", r"scheme 'ftp' not allowed"),
    ("javascript:alert(1),x,,", r"scheme 'javascript' not allowed"),
    ("file:///etc/passwd,x,,", r"scheme 'file' not allowed"),
    (",x,,", r"empty url"),
    ("https://h.example/a b.mp4,x,,", r"whitespace"),
    ("http://,x,,", r"no host"),
    ("http://h.example:99999/v,x,,", r"malformed url"),
    ("h.example/v.mp4,x,,", r"scheme '\(none\)'"),
    ("https://h.example/other.mp4,vid_a,,", r"duplicate video_id 'vid_a' \(first on row 2\)"),
    ("https://example.org/a.mp4,vid_b,,", r"duplicate url \(first on row 2\)"),
    ("https://h.example/c.mp4,c,lic,note,extra", r"5 fields, header has 4"),
    ('https://h.example/d.mp4,"bad\x01id",,', r"control characters"),
    ("https://h.example/e.mp4," + "y" * 600 + ",,", r"video_id longer than"),
]


@pytest.mark.parametrize("row,why", BAD_SOURCES)
def test_bad_source_rows_name_the_row(tmp_path, row, why):
    p = _write(tmp_path, "url,video_id,license,note\n" + GOOD + row + "\n")
    with pytest.raises(ManifestError, match=r"^sources\.csv row 3: .*" + why):
        load_sources(p)


@pytest.mark.parametrize("text,why", [
    ("", r"sources\.csv: empty file"),
    ("# only a comment\n", r"sources\.csv: empty file"),
    ("link,video_id\nhttps://h.example/x,,\n", r"sources\.csv row 1: bad header .*unknown \['link'\].*missing \['url'\]"),
    ("url,url\nhttps://h.example/x,y\n", r"sources\.csv row 1: bad header .*duplicate column"),
    ('url,video_id\n"https://h.example/x,y\n', r"sources\.csv row \d+: "),
])
def test_bad_source_files(tmp_path, text, why):
    with pytest.raises(ManifestError, match=why):
        load_sources(_write(tmp_path, text))


def test_unreadable_source_files(tmp_path):
    with pytest.raises(ManifestError, match=r"sources\.csv: no such file"):
        load_sources(tmp_path / "sources.csv")
    with pytest.raises(ManifestError, match=r"sources\.csv: not UTF-8"):
        load_sources(_write(tmp_path, b"url\nhttps://h.example/\xff\xfe\n", mode="wb"))
    with pytest.raises(ManifestError, match=r"sources\.csv row 3: NUL byte"):
        load_sources(_write(tmp_path, b"url\nhttps://h.example/a\nhttps://h.example/\x00b\n", mode="wb"))


def test_optout_parses_and_matches(tmp_path):
    p = _write(tmp_path, "video_id_or_url,date,reason\n"
                         "vid_a,2026-01-31,subject asked\n"
                         "https://youtu.be/dQw4w9WgXcQ,2026-02-01,\n"
                         "HTTPS://Example.org/Some/Clip.mp4,2026-02-02,dmca\n", "optout.csv")
    o = load_optout(p)
    assert len(o) == 3 and o.entries[0].reason == "subject asked" and o.entries[1].row == 3
    assert o.matches("vid_a", "https://elsewhere.example/z")
    assert o.matches("zzz", "https://www.youtube.com/watch?v=dQw4w9WgXcQ")     # same video, other URL form
    assert o.matches("dQw4w9WgXcQ", None)
    assert o.matches("other", "https://example.org/Some/Clip.mp4")
    assert not o.matches("other", "https://example.org/some/clip.mp4")          # paths are case-sensitive
    assert not o.matches("vid_b", "https://example.org/a.mp4")
    assert video_id_from_url("https://example.org/Some/Clip.mp4") in o.ids
    assert load_optout(tmp_path / "missing.csv").ids == frozenset()


def test_one_optout_rule_matches_by_id_link_form_and_derived_id(tmp_path):
    """OptOut.matches, OptOut.entry_for and OptOutEntry.matches (used by curation, shards' apply, its
    unknown-entry report and verify) are one rule: the row and the video share a name."""
    p = _write(tmp_path, "video_id_or_url,date,reason\n"
                         "vid_a,2026-01-31,by id\n"
                         "https://www.youtube.com/watch?v=dQw4w9WgXcQ&si=share123,2026-02-01,yt link\n"
                         "https://Example.org/talk.mp4?utm_source=mail&lang=en#t=30,2026-02-02,plain link\n"
                         "still_007.jpg,2026-02-03,a still by file name\n", "optout.csv")
    o = load_optout(p)
    by_id, yt, plain, still = o.entries
    cases = [  # (video_id, url, the row that must match it, or None)
        ("vid_a", "https://elsewhere.example/z", by_id),                         # the id
        ("zzz", "https://youtu.be/dQw4w9WgXcQ", yt),                             # another form of the link
        ("zzz", "https://www.youtube.com/watch?feature=share&v=dQw4w9WgXcQ", yt),   # tracking keys
        ("dQw4w9WgXcQ", None, yt),                                               # id derived from the link
        ("", "HTTPS://EXAMPLE.ORG/talk.mp4?lang=en&utm_medium=x", plain),        # host case, tracking
        ("", "https://example.org/talk.mp4?lang=en", plain),                     # without tracking/fragment
        ("other", "https://example.org/talk.mp4?lang=de", None),                 # a real query differs
        ("other", "https://example.org/TALK.mp4?lang=en", None),                 # paths are case-sensitive
        ("x", "still_007.jpg", still),                                           # a still's file name
        ("nobody", "https://h.example/v.mp4", None),
        ("", "", None),
    ]
    for vid, url, want in cases:
        assert o.entry_for(vid, url) is want, (vid, url)
        assert o.matches(vid, url) is (want is not None), (vid, url)
        assert [e for e in o.entries if e.matches(vid, url)] == ([want] if want else []), (vid, url)
    assert {"vid_a", "dQw4w9WgXcQ", "still_007.jpg"} <= o.ids and "https://example.org/talk.mp4?lang=en" in o.urls


@pytest.mark.parametrize("row,why", [
    (",2026-01-01,x", r"empty video_id_or_url"),
    ("vid,2026-13-01,x", r"date '2026-13-01' is not a real date"),
    ("vid,1/2/2026,x", r"date '1/2/2026' is not YYYY-MM-DD"),
    ("vid,,x", r"date '' is not YYYY-MM-DD"),
    ("ftp://h.example/v,2026-01-01,x", r"scheme 'ftp' not allowed"),
])
def test_bad_optout_rows_name_the_row(tmp_path, row, why):
    p = _write(tmp_path, "video_id_or_url,date,reason\nok_id,2026-01-01,fine\n" + row + "\n", "optout.csv")
    with pytest.raises(ManifestError, match=r"^optout\.csv row 3: .*" + why):
        load_optout(p)


def test_shipped_optout_is_header_only():
    o = load_optout(REPO / "manifests" / "optout.csv")
    assert len(o) == 0 and not o.matches("anything", "https://h.example/x")
