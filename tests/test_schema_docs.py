"""The data contracts are written once in code and documented in manifests/README.md: the two must agree."""
import re
from pathlib import Path

from pipeline.schema import CLIPS, REJECTIONS, SHARD_MEMBERS, VIDEOS

DOC = (Path(__file__).resolve().parents[1] / "manifests" / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"manifests/README.md has no '## {title}' section"
    return m.group(1)


def test_every_manifest_column_is_documented():
    clips = _section("clips.parquet")
    for schema in (CLIPS, VIDEOS, REJECTIONS):
        missing = [f.name for f in schema if f"`{f.name}`" not in clips]
        assert not missing, f"undocumented columns: {missing}"


def test_every_shard_member_is_documented_with_its_dtype():
    shards = _section("shards")
    for member, desc in SHARD_MEMBERS.items():
        dtype = desc.split()[0]
        row = next((line for line in shards.splitlines() if line.startswith(f"| `{member}`")), None)
        assert row is not None, f"shard member {member} undocumented"
        if member.endswith(".npy"):
            assert f"| {dtype} |" in row, f"{member}: code says {dtype}, doc row says {row}"
