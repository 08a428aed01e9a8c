"""manifests/sources.csv and manifests/optout.csv: parse and validate (format in manifests/README.md).

Every problem raises `ManifestError` with one line naming the file and the row (the physical
line number, header = line 1), so a user can fix the file; nothing downstream starts on a bad
manifest. Ids are untrusted: a `Source` keeps the raw id and a file-name-safe form of it.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.ids import video_id_from_url
from pipeline.paths import safe_name

SOURCES_COLUMNS = ("url", "video_id", "license", "note")
OPTOUT_COLUMNS = ("video_id_or_url", "date", "reason", "face_photo")
MAX_URL = 2048
MAX_ID = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ManifestError(ValueError):
    """A malformed manifest; the message names the file and the row."""


@dataclass(frozen=True)
class Source:
    url: str
    video_id: str          # as given in the file, or derived from the URL (pipeline.ids.video_id_from_url)
    safe_id: str           # safe_name(video_id): the only form used in file names
    license: str
    note: str
    row: int               # line number in sources.csv
    id_given: bool         # False when video_id was derived from the URL


_TRACKING = re.compile(r"^(utm_[a-z_]+|fbclid|gclid|si|feature)$")   # share/tracking query keys: not the video


def url_match_form(url: str) -> str:
    """The form two links to one video share for opt-out matching: normalize_url, minus tracking
    query parameters (utm_*, fbclid, gclid, si, feature) and the fragment, which no server sees."""
    u = normalize_url(url)
    p = urlsplit(u)
    if not p.scheme:
        return u      # a still's "url" is its file name
    query = "&".join(kv for kv in p.query.split("&") if kv and not _TRACKING.match(kv.split("=", 1)[0]))
    return p._replace(query=query, fragment="").geturl()


def video_names(video_id: str | None, url: str | None) -> set[str]:
    """Every name a video goes by in optout.csv: its id, its link (match form) and the id that link
    maps to (a youtu.be link and a watch?v= link of one video share that id)."""
    names = {video_id} if video_id else set()
    if url:
        u = url_match_form(url)
        names |= {u, video_id_from_url(u)}
    return names


@dataclass(frozen=True)
class OptOutEntry:
    value: str             # an id or a URL, as written ("" for a face_photo-only row)
    date: dt.date
    reason: str
    row: int
    photo: str = ""        # a face photo (path, resolved from optout.csv's folder): opt-out by person

    def names(self) -> set[str]:
        """The names of the video this row opts out: an id, or a link with the id it maps to."""
        if not self.value:       # a face_photo-only row names a person, not a video
            return set()
        if "://" in self.value:
            u = url_match_form(self.value)
            return {u, video_id_from_url(u)}
        return {self.value}

    def matches(self, video_id: str | None, url: str | None) -> bool:
        """The one opt-out rule: this row and the video share a name (video_names)."""
        return not self.names().isdisjoint(video_names(video_id, url))


@dataclass
class OptOut:
    """The rows of optout.csv, indexed by the names they give a video (OptOutEntry.names), so an
    opt-out by URL catches the same video listed under another form of its link (youtu.be vs watch?v=)."""
    entries: list[OptOutEntry] = field(default_factory=list)

    def __post_init__(self):
        self._by_name: dict[str, OptOutEntry] = {}
        for e in self.entries:           # in file order: a name's first row is the one cited
            for n in e.names():
                self._by_name.setdefault(n, e)

    @property
    def ids(self) -> frozenset[str]:
        """Opted-out ids, each listed URL's id among them."""
        return frozenset(n for n in self._by_name if "://" not in n)

    @property
    def urls(self) -> frozenset[str]:
        return frozenset(n for n in self._by_name if "://" in n)

    @property
    def photos(self) -> list[OptOutEntry]:
        """The rows that name a person by a face photo (pipeline/shards/people.py removes their clips)."""
        return [e for e in self.entries if e.photo]

    def entry_for(self, video_id: str | None, url: str | None) -> OptOutEntry | None:
        """The first optout.csv row naming this video (the same rule as OptOutEntry.matches), or None."""
        hits = [self._by_name[n] for n in video_names(video_id, url) if n in self._by_name]
        return min(hits, key=lambda e: e.row) if hits else None

    def matches(self, video_id: str | None, url: str | None) -> bool:
        return self.entry_for(video_id, url) is not None

    def __len__(self) -> int:
        return len(self.entries)


def normalize_url(url: str) -> str:
    """Only trims whitespace and lower-cases scheme and host: paths and queries are case-sensitive."""
    url = url.strip()
    p = urlsplit(url)
    if not p.scheme:
        return url
    return p._replace(scheme=p.scheme.lower(), netloc=p.netloc.lower()).geturl()


def check_url(url: str) -> str | None:
    """Why this URL is unacceptable, or None."""
    if not url:
        return "empty url"
    if len(url) > MAX_URL:
        return f"url longer than {MAX_URL} characters"
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        return "url contains whitespace or control characters"
    try:
        p = urlsplit(url)
        p.port                                 # noqa: B018 - raises on a malformed port
    except ValueError as e:
        return f"malformed url ({e})"
    if p.scheme.lower() not in ("http", "https"):
        return f"url scheme {p.scheme or '(none)'!r} not allowed (only http, https)"
    if not p.hostname:
        return "url has no host"
    return None


def _rows(path: Path, columns: tuple[str, ...], required: tuple[str, ...]):
    """Yield (line_number, {column: stripped value}) for the data rows; '#' comment and blank lines skipped."""
    name = path.name
    if not path.is_file():
        raise ManifestError(f"{name}: no such file ({path})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{name}: not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise ManifestError(f"{name} row {text[:text.index(chr(0))].count(chr(10)) + 1}: NUL byte")
    reader = csv.reader(text.splitlines(), strict=True)
    header = None
    try:
        for raw in reader:
            line = reader.line_num
            if not raw or all(not c.strip() for c in raw) or raw[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [c.strip().lower() for c in raw]
                unknown = [c for c in header if c not in columns]
                missing = [c for c in required if c not in header]
                if unknown or missing or len(set(header)) != len(header):
                    raise ManifestError(
                        f"{name} row {line}: bad header {raw!r}: expected columns {', '.join(columns)}"
                        + (f"; unknown {unknown}" if unknown else "") + (f"; missing {missing}" if missing else "")
                        + ("; duplicate column" if len(set(header)) != len(header) else ""))
                continue
            if len(raw) > len(header):
                raise ManifestError(f"{name} row {line}: {len(raw)} fields, header has {len(header)} "
                                    f"(quote values that contain commas)")
            yield line, {c: (raw[i].strip() if i < len(raw) else "") for i, c in enumerate(header)}
    except csv.Error as e:
        raise ManifestError(f"{name} row {reader.line_num}: {e}") from None
    if header is None:
        raise ManifestError(f"{name}: empty file (expected a header: {', '.join(columns)})")


def load_sources(path: str | Path) -> list[Source]:
    path = Path(path)
    out: list[Source] = []
    seen_id: dict[str, int] = {}
    seen_url: dict[str, int] = {}
    for line, r in _rows(path, SOURCES_COLUMNS, ("url",)):
        where = f"{path.name} row {line}"
        url = r["url"]
        why = check_url(url)
        if why:
            raise ManifestError(f"{where}: {why}: {url[:80]!r}")
        url = normalize_url(url)
        vid = r.get("video_id", "")
        if len(vid) > MAX_ID:
            raise ManifestError(f"{where}: video_id longer than {MAX_ID} characters")
        if _CONTROL.search(vid):
            raise ManifestError(f"{where}: video_id contains control characters")
        given = bool(vid)
        vid = vid or video_id_from_url(url)
        if vid in seen_id:
            raise ManifestError(f"{where}: duplicate video_id {vid[:80]!r} (first on row {seen_id[vid]})")
        if url in seen_url:
            raise ManifestError(f"{where}: duplicate url (first on row {seen_url[url]})")
        seen_id[vid], seen_url[url] = line, line
        out.append(Source(url, vid, safe_name(vid), r.get("license", ""), r.get("note", ""), line, given))
    return out


def load_optout(path: str | Path) -> OptOut:
    """A missing file means nobody opted out (the repository ships a header-only file)."""
    path = Path(path)
    if not path.exists():
        return OptOut()
    entries = []
    for line, r in _rows(path, OPTOUT_COLUMNS, OPTOUT_COLUMNS[:2]):
        where = f"{path.name} row {line}"
        value, date = r["video_id_or_url"], r["date"]
        photo = _photo(path, r.get("face_photo", ""), where)
        if not value and not photo:
            raise ManifestError(f"{where}: empty video_id_or_url (and no face_photo)")
        if _CONTROL.search(value):
            raise ManifestError(f"{where}: video_id_or_url contains control characters")
        if not _DATE.match(date):
            raise ManifestError(f"{where}: date {date[:40]!r} is not YYYY-MM-DD")
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            raise ManifestError(f"{where}: date {date!r} is not a real date") from None
        if "://" in value:
            why = check_url(value)
            if why:
                raise ManifestError(f"{where}: {why}: {value[:80]!r}")
            value = normalize_url(value)
        entries.append(OptOutEntry(value, day, r.get("reason", ""), line, photo))
    return OptOut(entries)


def _photo(optout_csv: Path, value: str, where: str) -> str:
    """A face_photo cell -> the photo's path (relative ones from optout.csv's folder), checked to be an image."""
    if not value:
        return ""
    if _CONTROL.search(value):
        raise ManifestError(f"{where}: face_photo contains control characters")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else optout_csv.parent / p
    if not p.is_file():
        raise ManifestError(f"{where}: face_photo not found: {value[:120]}")
    head = p.read_bytes()[:12]
    if not (head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"BM")) or head[8:12] == b"WEBP"):
        raise ManifestError(f"{where}: face_photo is not a JPEG, PNG, WebP or BMP image: {value[:120]}")
    return str(p)


def load_inputs(sources_csv: Path, optout_csv: Path | None) -> list[dict]:
    """sources.csv (+ optout.csv) -> [{"video_id", "url", "opted_out"}]; ManifestError on a bad row."""
    srcs = load_sources(sources_csv)
    opt = load_optout(optout_csv) if optout_csv else None     # a missing file: nobody opted out
    out = []
    for s in srcs:
        out.append({"video_id": s.video_id, "url": s.url, "opted_out": bool(opt and opt.matches(s.video_id, s.url))})
    return out
