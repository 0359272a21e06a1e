"""vst_plugin.sequence: frame ranges and sequence patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from vst_plugin.sequence import (
    MAX_FRAMES,
    SequenceError,
    frame_path,
    frames_on_disk,
    has_frame_token,
    parse_frames,
)

# ------------------------------------------------------------------------------------------------
# parse_frames


@pytest.mark.parametrize(
    ("spec", "frames"),
    [
        ("5", [5]),
        ("0", [0]),
        ("-7", [-7]),
        ("1-10", list(range(1, 11))),
        ("1001-1003", [1001, 1002, 1003]),
        ("5-5", [5]),
        ("1-10,15,20-30x2", [*range(1, 11), 15, 20, 22, 24, 26, 28, 30]),
        ("1-10x3", [1, 4, 7, 10]),
        ("1-11x3", [1, 4, 7, 10]),
        ("1-10x100", [1]),
        ("-3-2", [-3, -2, -1, 0, 1, 2]),
        ("-10--5", [-10, -9, -8, -7, -6, -5]),
        ("-10--2x4", [-10, -6, -2]),
        ("007-009", [7, 8, 9]),
        (" 1-3 , 7 ", [1, 2, 3, 7]),
        ("1-10y3", [2, 3, 5, 6, 8, 9]),  # fileseq: the frames 1-10x3 leaves out
        ("1-10:2", [1, 3, 5, 7, 9, 2, 4, 6, 8, 10]),  # fileseq: every 2nd, then the rest
    ],
)
def test_parse_frames(spec: str, frames: list[int]) -> None:
    assert parse_frames(spec) == frames


def test_parse_frames_keeps_the_given_order() -> None:
    assert parse_frames("20,10,1-3") == [20, 10, 1, 2, 3]
    assert parse_frames("10-12,1-2") == [10, 11, 12, 1, 2]


def test_parse_frames_drops_repeats_keeping_the_first() -> None:
    assert parse_frames("5,3,5") == [5, 3]
    assert parse_frames("1-5,3-7") == [1, 2, 3, 4, 5, 6, 7]
    assert parse_frames("4,1-5") == [4, 1, 2, 3, 5]
    assert parse_frames("1-9x2,1-9x3") == [1, 3, 5, 7, 9, 4]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty frame range"),
        ("   ", "empty frame range"),
        ("1,,2", "empty item"),
        ("1,", "empty item"),
        (",1", "empty item"),
        ("10-1", "reversed"),
        ("-2--5", "reversed"),
        ("1-10x0", "step of 0"),
        ("abc", "cannot read 'abc'"),
        ("1-", "cannot read '1-'"),
        ("-", "cannot read '-'"),
        ("1-2-3", "cannot read"),
        ("1x2", "cannot read"),
        ("1-10x", "cannot read"),
        ("1-10x-2", "cannot read"),
        ("1-10/2", "cannot read"),
        ("--1", "cannot read"),
        ("+1", "cannot read"),
        ("1.5", "cannot read"),
        ("1 - 5", "cannot read"),
        ("1;2", "cannot read"),
        ("\u0661-\u0663", "cannot read"),  # Arabic-Indic digits are not frame numbers
    ],
)
def test_parse_frames_rejects(spec: str, message: str) -> None:
    with pytest.raises(SequenceError, match=message):
        parse_frames(spec)


def test_parse_frames_error_names_the_range() -> None:
    with pytest.raises(SequenceError, match=r"'1-10,oops'"):
        parse_frames("1-10,oops")


def test_parse_frames_refuses_huge_ranges() -> None:
    assert len(parse_frames(f"1-{MAX_FRAMES}")) == MAX_FRAMES
    with pytest.raises(SequenceError, match="more than"):
        parse_frames("1-1000000000")
    with pytest.raises(SequenceError, match="more than"):
        parse_frames(f"1-{MAX_FRAMES},{MAX_FRAMES + 1}")


def test_sequence_error_is_a_value_error() -> None:
    assert issubclass(SequenceError, ValueError)
    with pytest.raises(ValueError):
        parse_frames("x")


def test_parse_frames_needs_a_string() -> None:
    with pytest.raises(SequenceError, match="string"):
        parse_frames(5)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# frame_path


@pytest.mark.parametrize(
    ("pattern", "frame", "path"),
    [
        ("plate.####.exr", 1, "plate.0001.exr"),
        ("plate.####.exr", 1001, "plate.1001.exr"),
        ("plate.####.exr", 123456, "plate.123456.exr"),
        ("plate.####.exr", 0, "plate.0000.exr"),
        ("plate.#.exr", 7, "plate.7.exr"),
        ("plate.#.exr", 42, "plate.42.exr"),
        ("plate.########.exr", 5, "plate.00000005.exr"),
        ("plate.%04d.exr", 12, "plate.0012.exr"),
        ("plate.%d.exr", 12, "plate.12.exr"),
        ("plate.%d.exr", 0, "plate.0.exr"),
        ("plate.%0d.exr", 12, "plate.12.exr"),
        ("plate.%08d.exr", 12, "plate.00000012.exr"),
        ("plate.@@@.exr", 9, "plate.009.exr"),
        ("plate.@.exr", 9, "plate.9.exr"),
        ("plate_####", 3, "plate_0003"),
        ("####.exr", 3, "0003.exr"),
        ("/shots/sh010/comp/v003/plate.####.exr", 1001, "/shots/sh010/comp/v003/plate.1001.exr"),
        ("C:\\renders\\plate.%04d.exr", 2, "C:\\renders\\plate.0002.exr"),
        ("100%.####.exr", 1, "100%.0001.exr"),
    ],
)
def test_frame_path(pattern: str, frame: int, path: str) -> None:
    assert frame_path(pattern, frame) == path


@pytest.mark.parametrize(
    ("pattern", "frame", "path"),
    [
        ("plate.####.exr", -1, "plate.-001.exr"),
        ("plate.####.exr", -12, "plate.-012.exr"),
        ("plate.####.exr", -1234, "plate.-1234.exr"),
        ("plate.%04d.exr", -5, "plate.-005.exr"),
        ("plate.%d.exr", -5, "plate.-5.exr"),
        ("plate.@@@.exr", -2, "plate.-02.exr"),
        ("plate.#.exr", -3, "plate.-3.exr"),
    ],
)
def test_negative_frames_keep_the_sign_in_front(pattern: str, frame: int, path: str) -> None:
    # Like printf's %0Nd: the padding is the total width, sign included.
    assert frame_path(pattern, frame) == path


def test_printf_and_hash_patterns_agree() -> None:
    for frame in (-1001, -10, -1, 0, 1, 9, 10, 999, 1000, 10000):
        assert frame_path("a.####.exr", frame) == frame_path("a.%04d.exr", frame) == f"a.{frame:04d}.exr"
        assert frame_path("a.@@@@.exr", frame) == frame_path("a.####.exr", frame)


@pytest.mark.parametrize("pattern", ["plate.exr", "plate.0001.exr", "plate.%s.exr", "plate.%x.exr", "", "%"])
def test_no_frame_token(pattern: str) -> None:
    assert not has_frame_token(pattern)
    with pytest.raises(SequenceError, match="no frame number token"):
        frame_path(pattern, 1)


@pytest.mark.parametrize(
    "pattern",
    ["plate.####.####.exr", "sh####/plate.####.exr", "plate.#%04d.exr", "plate.%d.%d.exr", "a.##@@.exr"],
)
def test_more_than_one_frame_token(pattern: str) -> None:
    assert has_frame_token(pattern)
    with pytest.raises(SequenceError, match="frame number tokens"):
        frame_path(pattern, 1)


def test_space_padded_printf_token_is_refused() -> None:
    assert has_frame_token("plate.%4d.exr")
    with pytest.raises(SequenceError, match="%04d"):
        frame_path("plate.%4d.exr", 1)


@pytest.mark.parametrize(
    "pattern", ["a.####.exr", "a.#.exr", "a.@@.exr", "a.%d.exr", "a.%04d.exr", "a.%0d.exr", "/x/y_####"]
)
def test_has_frame_token(pattern: str) -> None:
    assert has_frame_token(pattern)


@pytest.mark.parametrize("frame", [1.0, "1", None, True])
def test_frame_must_be_an_int(frame: object) -> None:
    with pytest.raises(SequenceError, match="int"):
        frame_path("a.####.exr", frame)  # type: ignore[arg-type]


def test_frames_and_patterns_together() -> None:
    paths = [frame_path("out/plate.%04d.exr", n) for n in parse_frames("1-3,-1")]
    assert paths == ["out/plate.0001.exr", "out/plate.0002.exr", "out/plate.0003.exr", "out/plate.-001.exr"]


# ------------------------------------------------------------------------------------------------
# frames_on_disk


def test_frames_on_disk_follow_nuke_padding(tmp_path: Path) -> None:
    for name in ("p.0001.png", "p.0002.png", "p.0005.png", "p.-001.png", "p.00003.png", "q.1.png", "q.10.png"):
        (tmp_path / name).touch()
    assert frames_on_disk(str(tmp_path / "p.####.png")) == [-1, 1, 2, 5]
    assert frames_on_disk(str(tmp_path / "p.%04d.png")) == [-1, 1, 2, 5]
    assert frames_on_disk(str(tmp_path / "p.@@@@@.png")) == [3]
    assert frames_on_disk(str(tmp_path / "q.#.png")) == [1, 10]  # one # is one digit or more, as in Nuke
    with pytest.raises(SequenceError, match="no frames on disk"):
        frames_on_disk(str(tmp_path / "r.####.png"))
    with pytest.raises(SequenceError, match="no frame number token"):
        frames_on_disk(str(tmp_path / "p.0001.png"))
