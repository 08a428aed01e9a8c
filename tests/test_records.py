"""The typed rows (pipeline/records.py) mirror the schema (pipeline/schema.py), the one source of columns."""
from __future__ import annotations

import dataclasses
import typing

import pyarrow as pa
import pytest

from pipeline.records import ClipRow, VideoRow
from pipeline.schema import CLIPS, VIDEOS


def _python_type(t: pa.DataType):
    if pa.types.is_string(t):
        return str
    if pa.types.is_int64(t):
        return int
    if pa.types.is_float64(t):
        return float
    if pa.types.is_boolean(t):
        return bool
    if pa.types.is_list(t):
        return list
    raise AssertionError(f"no Python type for {t}")


@pytest.mark.parametrize("row,schema", [(ClipRow, CLIPS), (VideoRow, VIDEOS)])
def test_row_fields_are_the_schema_columns_in_order_with_matching_types(row, schema):
    fields = dataclasses.fields(row)
    assert [f.name for f in fields] == schema.names
    hints = typing.get_type_hints(row)
    for f in schema:
        allowed = {typing.get_origin(a) or a for a in typing.get_args(hints[f.name]) or (hints[f.name],)} - {type(None)}
        assert allowed == {_python_type(f.type)}, (f.name, hints[f.name], f.type)


def test_rows_fill_their_tables_and_leave_unset_fields_null():
    clip = ClipRow("c1", "v", "https://h/x", "media/v.mp4", "", 0, 25, 0.0, 1.0, 1.0, 25.0, 10, 20, 128, 0.45, 0.53,
                   0.0, 0.9, 1.0, 5.0, 0.01, 0.02, 55.0, "sharpness-v1", 128, "accepted", "", "video_start", "cut",
                   identity=[0.5, -0.5], identity_frames=2)
    table = pa.Table.from_pylist([clip.to_dict()], schema=CLIPS)
    got = table.to_pylist()[0]
    assert got["identity"] == [0.5, -0.5] and got["identity_frames"] == 2 and got["end_frame"] == 25
    assert got["identity_id"] is None and got["face_hashes"] is None      # set later, or never for this clip
    video = VideoRow("v", "https://h/x", "http_404", "http_404", "gone", "", 0, 3, config="abc")
    got = pa.Table.from_pylist([video.to_dict()], schema=VIDEOS).to_pylist()[0]
    assert (got["status"], got["attempts"], got["config"]) == ("http_404", 3, "abc")
    assert got["num_frames"] is None and got["width"] is None            # never decoded: probe fields null
