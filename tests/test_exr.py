"""vst_plugin.exr on real OpenEXR files from ../shared/exr: reading, bit-exact round trips, damage."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import msgpack
import numpy as np
import OpenImageIO as oiio
import pytest

from vst_plugin.exr import ExrError, decode_exr, encode_exr, read_exr, write_exr
from vst_plugin.frame import Frame, FrameLimitError, FrameLimits, Part

# The same folder as conftest's `shared` fixture, needed here at collection time to parametrize.
_EXR = Path(__file__).resolve().parents[1].parent / "shared" / "exr"
_DAMAGED = sorted(path.name for path in (_EXR / "Damaged").iterdir()) if (_EXR / "Damaged").is_dir() else []

ROUND_TRIPS = [
    "Beachball/singlepart.0001.exr",
    "Beachball/multipart.0001.exr",
    *(f"DisplayWindow/t{index:02d}.exr" for index in range(1, 17)),
    "TestImages/AllHalfValues.exr",
    "TestImages/BrightRingsNanInf.exr",
    "TestImages/WideFloatRange.exr",
    "TestImages/stripes.exr",
    "Tiles/GoldenGate.exr",
    "MultiResolution/Bonita.exr",
    "ScanLines/Desk.exr",
    "Chromaticities/Rec709.exr",
]


@pytest.fixture(scope="session")
def exr(shared: Path) -> Path:
    return shared / "exr"


def bits(plane: np.ndarray) -> np.ndarray:
    """The raw bits of a plane, so that NaN payloads compare too."""
    return plane.view({2: np.uint16, 4: np.uint32}[plane.dtype.itemsize])


def assert_same_frame(expected: Frame, actual: Frame, *, ignore: tuple[str, ...] | None = ("DateTime",)) -> None:
    """Same parts, planes (bit for bit), windows, names and views; same attributes but for `ignore`.

    OpenImageIO stamps DateTime when a part has none, and for frames built in memory it adds the
    standard attributes (lineOrder, PixelAspectRatio, screenWindow*): pass ignore=None to check only
    that the expected attributes are kept.
    """
    assert len(actual.parts) == len(expected.parts)
    for index, (want, got) in enumerate(zip(expected.parts, actual.parts, strict=True)):
        where = f"part {index}"
        assert list(got.channels) == list(want.channels), where
        for name, plane in want.channels.items():
            assert got.channels[name].dtype == plane.dtype, f"{where} {name}"
            assert np.array_equal(bits(got.channels[name]), bits(plane)), f"{where} {name}"
        assert got.data_window == want.data_window, where
        assert got.display_window == want.display_window, where
        assert (got.name, got.view) == (want.name, want.view), where
        if ignore is None:
            assert {k: got.attributes.get(k) for k in want.attributes} == want.attributes, where
        else:
            assert {k: v for k, v in got.attributes.items() if k not in ignore} == {
                k: v for k, v in want.attributes.items() if k not in ignore
            }, where


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".tmp-" in name)


def scratch_files() -> set[str]:
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return {name for name in os.listdir(folder) if name.startswith(".vst-")}


# ------------------------------------------------------------------------------------------------
# Reading


def test_singlepart_beachball(exr: Path) -> None:
    frame = read_exr(exr / "Beachball/singlepart.0001.exr")
    assert len(frame.parts) == 1
    part = frame.parts[0]
    assert len(part.channels) == 20
    assert list(part.channels)[:5] == ["R", "G", "B", "A", "Z"]
    assert "left.R" in part.channels and "whitebarmask.right.mask" in part.channels
    assert all(plane.dtype == np.float16 for plane in part.channels.values())
    assert all(plane.shape == (876, 911) and plane.flags.c_contiguous for plane in part.channels.values())
    assert part.data_window == (654, 245, 1564, 1120)
    assert part.display_window == (0, 0, 2047, 1555)
    assert (part.name, part.view) == ("rgba", None)
    assert part.attributes["multiView"] == ("right", "left")
    assert part.attributes["compression"] == "zips"
    assert part.attributes["lineOrder"] == "increasingY"
    assert part.attributes["PixelAspectRatio"] == 1.0
    assert part.attributes["screenWindowCenter"] == (0.0, 0.0)
    assert not any(name.startswith("oiio:") or name.startswith("openexr:") for name in part.attributes)
    frame.check()


def test_multipart_beachball(exr: Path) -> None:
    frame = read_exr(exr / "Beachball/multipart.0001.exr")
    names = [part.name for part in frame.parts]
    assert names == [
        "rgba_right",
        "depth_left",
        "forward_left",
        "whitebarmask_left",
        "rgba_left",
        "depth_right",
        "forward_right",
        "disparityL",
        "disparityR",
        "whitebarmask_right",
    ]
    assert [part.view for part in frame.parts] == [
        "right", "left", "left", "left", "left", "right", "right", None, None, "right",
    ]  # fmt: skip
    assert frame.parts[0].data_window == (654, 245, 1530, 1120)
    assert frame.parts[3].data_window == (1106, 245, 1490, 1013)
    assert len({part.data_window for part in frame.parts}) > 3
    assert list(frame.parts[2].channels) == ["forward.u", "forward.v"]
    assert all(part.display_window == (0, 0, 2047, 1555) for part in frame.parts)
    for part in frame.parts:
        assert all(plane.shape == (part.height, part.width) for plane in part.channels.values())
    frame.check()


def test_float_channel_keeps_its_type(exr: Path) -> None:
    part = read_exr(exr / "TestImages/WideFloatRange.exr").parts[0]
    assert list(part.channels) == ["G"]
    assert part.channels["G"].dtype == np.float32
    assert np.ptp(np.log10(np.abs(part.channels["G"][part.channels["G"] != 0]))) > 20  # a wide range


def test_nan_and_inf_are_read(exr: Path) -> None:
    plane = read_exr(exr / "TestImages/BrightRingsNanInf.exr").parts[0].channels["R"]
    assert np.isnan(plane).any() and np.isinf(plane).any()
    every = read_exr(exr / "TestImages/AllHalfValues.exr").parts[0].channels["R"]
    assert len(np.unique(bits(every))) == 65536


def test_tiled_and_mipmapped_files_read_at_full_resolution(exr: Path) -> None:
    tiled = read_exr(exr / "Tiles/GoldenGate.exr").parts[0]
    assert tiled.data_window == (0, 0, 1261, 859)
    mipmapped = read_exr(exr / "MultiResolution/Bonita.exr").parts[0]
    assert mipmapped.data_window == (0, 0, 549, 831)
    assert "textureformat" not in mipmapped.attributes  # would make the written file a MIP map


@pytest.mark.parametrize("index", range(1, 17))
def test_display_windows(exr: Path, index: int) -> None:
    path = exr / f"DisplayWindow/t{index:02d}.exr"
    spec = oiio.ImageInput.open(str(path))
    try:
        header = spec.spec()
        display = (
            header.full_x,
            header.full_y,
            header.full_x + header.full_width - 1,
            header.full_y + header.full_height - 1,
        )
    finally:
        spec.close()
    part = read_exr(path).parts[0]
    assert part.display_window == display
    assert part.data_window[2] - part.data_window[0] + 1 == 400


def test_negative_display_window_origin(exr: Path) -> None:
    assert read_exr(exr / "DisplayWindow/t07.exr").parts[0].display_window == (-40, -40, 440, 330)


def test_attributes_are_msgpack_plain(exr: Path) -> None:
    for name in ("Beachball/singlepart.0001.exr", "Tiles/GoldenGate.exr", "Chromaticities/Rec709.exr"):
        for part in read_exr(exr / name).parts:
            assert msgpack.unpackb(msgpack.packb(part.attributes)) == {
                key: list(value) if isinstance(value, tuple) else value for key, value in part.attributes.items()
            }


# ------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_is_bit_exact(exr: Path, tmp_path: Path, name: str) -> None:
    original = read_exr(exr / name)
    target = tmp_path / "copy.exr"
    write_exr(original, target)
    again = read_exr(target)
    assert_same_frame(original, again)
    assert again.parts[0].attributes["compression"] == original.parts[0].attributes["compression"]
    assert leftovers(tmp_path) == []


def test_written_files_have_the_planes_types_and_parts(exr: Path, tmp_path: Path) -> None:
    frame = read_exr(exr / "Beachball/multipart.0001.exr")
    write_exr(frame, tmp_path / "multi.exr")
    written = oiio.ImageInput.open(str(tmp_path / "multi.exr"))
    try:
        assert written.spec().get_int_attribute("oiio:subimages") == 10
        assert [written.spec(index).get_string_attribute("name") for index in range(10)] == [
            part.name for part in frame.parts
        ]
    finally:
        written.close()


def test_tiled_input_is_written_as_scanlines(exr: Path, tmp_path: Path) -> None:
    write_exr(read_exr(exr / "Tiles/GoldenGate.exr"), tmp_path / "gg.exr")
    written = oiio.ImageInput.open(str(tmp_path / "gg.exr"))
    try:
        assert written.spec().tile_width == 0
    finally:
        written.close()


def test_bytes_round_trip(exr: Path) -> None:
    before = scratch_files()
    original = read_exr(exr / "Beachball/multipart.0001.exr")
    data = encode_exr(original)
    assert data[:4] == b"\x76\x2f\x31\x01"
    assert_same_frame(original, decode_exr(data))
    file_bytes = (exr / "TestImages/AllHalfValues.exr").read_bytes()
    assert_same_frame(read_exr(exr / "TestImages/AllHalfValues.exr"), decode_exr(file_bytes))
    assert scratch_files() == before


def test_decode_errors_name_the_data_and_clean_up(exr: Path) -> None:
    before = scratch_files()
    with pytest.raises(ExrError, match=r"^EXR data \(7 bytes\): not an OpenEXR file"):
        decode_exr(b"garbage")
    truncated = (exr / "ScanLines/Desk.exr").read_bytes()[:5000]
    with pytest.raises(ExrError, match=r"^EXR data \(5000 bytes\): ") as caught:
        decode_exr(truncated)
    assert "/dev/shm" not in str(caught.value) and ".vst-" not in str(caught.value)
    assert scratch_files() == before


def plane(dtype: type, seed: int, shape: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Random bit patterns (NaNs with payloads, infinities, denormals) of a pixel type."""
    raw = np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    if dtype is np.float16:
        return raw.astype(np.uint16).view(np.float16)
    return raw.view(dtype)


def test_mixed_pixel_types_round_trip(tmp_path: Path) -> None:
    ids = plane(np.uint32, 3) % (2**24 + 1)
    ids.flat[:4] = [0, 1, 2**24 - 1, 2**24]
    part = Part(
        {"R": plane(np.float16, 1), "Z": plane(np.float32, 2), "id": ids},
        data_window=(-10, 5, 37, 68),
        display_window=(0, 0, 99, 99),
        name="mixed",
        attributes={"compression": "piz"},
    )
    uints = Part({"hash": plane(np.uint32, 4)}, (0, 0, 47, 63), (0, 0, 99, 99), name="ids", view="left")
    frame = Frame([part, uints])
    write_exr(frame, tmp_path / "mixed.exr")
    assert_same_frame(frame, read_exr(tmp_path / "mixed.exr"), ignore=None)


def test_mixed_part_with_large_uint_values_is_refused(tmp_path: Path) -> None:
    ids = np.full((64, 48), 2**24 + 1, np.uint32)
    frame = Frame([Part({"R": plane(np.float16, 1), "id": ids}, (0, 0, 47, 63), (0, 0, 47, 63))])
    with pytest.raises(ExrError, match="uint channel 'id' holds values above 16777216"):
        write_exr(frame, tmp_path / "ids.exr")
    assert os.listdir(tmp_path) == []


def test_attributes_round_trip(tmp_path: Path) -> None:
    attributes = {
        "compression": "dwab",
        "openexr:dwaCompressionLevel": 60.0,
        "lineOrder": "decreasingY",
        "FramesPerSecond": (24000, 1001),
        "smpte:TimeCode": (0x01020304, 0),
        "worldtocamera": tuple(float(i) for i in range(16)),
        "chromaticities": (0.75, 0.25, 0.25, 0.75, 0.125, 0.0625, 0.3125, 0.3125),
        "adoptedNeutral": (0.3125, 0.3125),
        "screenWindowCenter": [0, 0],  # a list of ints, as msgpack may hand it over
        "screenWindowWidth": 1,
        "multiView": ["left", "right"],
        "Copyright": "vst",
        "DateTime": "2024:01:02 03:04:05",
        "myBox": (1, 2, 3, 4),
        "myVector": (1.0, 2.0, 3.0),
        "myFloats": (1.0, 2.0, 3.0, 4.0, 5.0),
        "myInt": -5,
        "myText": "h\u00e9llo",
    }
    frame = Frame([Part({"R": plane(np.float16, 0)}, (0, 0, 47, 63), (0, 0, 47, 63), "beauty", "left", attributes)])
    back = decode_exr(encode_exr(frame)).parts[0].attributes
    assert back.pop("worldToCamera") == attributes.pop("worldtocamera")  # OpenEXR's standard name
    assert back == {
        **attributes,
        "screenWindowCenter": (0.0, 0.0),
        "screenWindowWidth": 1.0,
        "multiView": ("left", "right"),
        "PixelAspectRatio": 1.0,  # OpenImageIO's default
    }


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", _DAMAGED)
def test_damaged_files_raise_exr_error(exr: Path, name: str) -> None:
    path = exr / "Damaged" / name
    assert path.is_file()
    with pytest.raises(ExrError) as caught:
        read_exr(path)
    assert str(caught.value).startswith(str(path))


def test_damaged_folder_is_complete(exr: Path) -> None:
    assert len(_DAMAGED) == 186


def test_deep_file_is_refused(exr: Path) -> None:
    with pytest.raises(ExrError, match="deep EXR is not supported"):
        read_exr(exr / "Damaged/imf_test_deep_tile_file_fuzz_broken_exr")


def test_error_after_pixels_is_not_ignored(exr: Path) -> None:
    with pytest.raises(ExrError, match="(?i)chunk count"):
        read_exr(exr / "Damaged/imf_test_tile_file_fuzz_broken_memleak_exr")


def test_missing_file_directory_and_other_formats(exr: Path, tmp_path: Path) -> None:
    with pytest.raises(ExrError, match="no such file"):
        read_exr(tmp_path / "missing.exr")
    with pytest.raises(ExrError, match="not a regular file"):
        read_exr(tmp_path)
    (tmp_path / "text.exr").write_text("not an image")
    with pytest.raises(ExrError, match=r"text\.exr: not an OpenEXR file"):
        read_exr(tmp_path / "text.exr")


def patched_window(data: bytes, attribute: bytes, box: tuple[int, int, int, int]) -> bytes:
    """EXR bytes with one box2i header attribute (dataWindow, displayWindow) overwritten."""
    key = attribute + b"\x00box2i\x00" + struct.pack("<i", 16)
    start = data.index(key) + len(key)
    return data[:start] + struct.pack("<4i", *box) + data[start + 16 :]


@pytest.mark.parametrize(
    ("attribute", "box", "message"),
    [
        (b"displayWindow", (10, 10, 5, 5), "Invalid display window"),
        (b"dataWindow", (0, 0, -5, 3), "Invalid data window"),
        (b"dataWindow", (0, 0, 2**31 - 2, 3), ""),
        (b"displayWindow", (-(2**31) + 1, 0, 2**31 - 2, 3), ""),
        (b"dataWindow", (0, 0, 39999, 3), "40000x4 pixels is over the limit"),
    ],
)
def test_broken_windows_are_refused(attribute: bytes, box: tuple[int, int, int, int], message: str) -> None:
    data = patched_window(encode_exr(small_frame()), attribute, box)
    with pytest.raises(ExrError, match=rf"^EXR data \({len(data)} bytes\): .*{message}"):
        decode_exr(data)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (FrameLimits(max_side=512), "911x876 pixels is over the limit (512 pixels a side"),
        (FrameLimits(max_pixels=100_000), "911x876 pixels is over the limit"),
        (FrameLimits(max_channels=10), "20 channels is over the limit of 10"),
    ],
)
def test_limits(exr: Path, limits: FrameLimits, message: str) -> None:
    path = exr / "Beachball/singlepart.0001.exr"
    with pytest.raises(ExrError, match=message.replace("(", r"\(")) as caught:
        read_exr(path, limits)
    assert str(caught.value).startswith(str(path))
    assert isinstance(caught.value.__cause__, FrameLimitError)
    with pytest.raises(ExrError, match=r"^EXR data \(\d+ bytes\): 911x876|^EXR data \(\d+ bytes\): 20 channels"):
        decode_exr(path.read_bytes(), limits)


def test_part_limit(exr: Path) -> None:
    with pytest.raises(ExrError, match=r"10 parts \(1 to 5 accepted\)"):
        read_exr(exr / "Beachball/multipart.0001.exr", FrameLimits(max_parts=5))
    assert len(read_exr(exr / "Beachball/multipart.0001.exr", FrameLimits(max_parts=10)).parts) == 10


# ------------------------------------------------------------------------------------------------
# Atomic writes


def small_frame(value: float = 0.5) -> Frame:
    planes = {name: np.full((4, 6), value, np.float16) for name in "RGB"}
    return Frame([Part(planes, (0, 0, 5, 3), (0, 0, 5, 3), attributes={"compression": "zip"})])


def test_write_creates_parent_directories(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "out.0001.exr"
    write_exr(small_frame(), target)
    assert_same_frame(small_frame(), read_exr(target), ignore=None)
    assert os.listdir(target.parent) == ["out.0001.exr"]


def test_write_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.exr"
    write_exr(small_frame(0.25), target)
    write_exr(small_frame(0.75), target)
    assert read_exr(target).parts[0].channels["R"][0, 0] == np.float16(0.75)
    assert os.listdir(tmp_path) == ["out.exr"]


def test_failed_write_leaves_the_existing_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "out.exr"
    target.write_bytes(b"previous render")
    broken = small_frame()
    broken.parts[0].channels["G"] = np.zeros((3, 6), np.float16)  # does not match the data window
    with pytest.raises(ExrError, match=r"out\.exr: .*'G'"):
        write_exr(broken, target)
    assert target.read_bytes() == b"previous render"
    assert os.listdir(tmp_path) == ["out.exr"]


def test_failure_inside_openexr_removes_the_temporary_file(tmp_path: Path) -> None:
    # Two parts with the same name: OpenEXR refuses the header after OpenImageIO has created the
    # (temporary) file, and OpenImageIO leaves that empty file behind: write_exr must remove it.
    part = small_frame().parts[0]
    twins = Frame([Part(dict(part.channels), part.data_window, part.display_window, name="same") for _ in "ab"])
    target = tmp_path / "out.exr"
    target.write_bytes(b"previous render")
    with pytest.raises(ExrError, match=r"out\.exr: "):
        write_exr(twins, target)
    assert target.read_bytes() == b"previous render"
    assert leftovers(tmp_path) == []


def test_unwritable_targets(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ExrError, match="cannot create the directory"):
        write_exr(small_frame(), tmp_path / "file" / "out.exr")
    (tmp_path / "folder.exr").mkdir()
    with pytest.raises(ExrError, match="is a directory"):
        write_exr(small_frame(), tmp_path / "folder.exr")
    assert sorted(os.listdir(tmp_path)) == ["file", "folder.exr"]


def test_invalid_frames_are_refused(tmp_path: Path) -> None:
    """Refused before any file is created."""
    unnamed = small_frame().parts[0]
    with pytest.raises(ExrError, match="need a name"):
        write_exr(Frame([unnamed, unnamed]), tmp_path / "out.exr")
    with pytest.raises(ExrError, match="at least one part"):
        write_exr(Frame([]), tmp_path / "out.exr")
    doubles = Frame([Part({"R": np.zeros((4, 6))}, (0, 0, 5, 3), (0, 0, 5, 3))])
    with pytest.raises(ExrError, match="not an EXR pixel type"):
        write_exr(doubles, tmp_path / "out.exr")
    planes = small_frame().parts[0].channels
    with pytest.raises(ExrError, match="empty display window"):
        encode_exr(Frame([Part(planes, (0, 0, 5, 3), (0, 0, -1, 3))]))
    with pytest.raises(ExrError, match="outside OpenEXR's 32-bit range"):
        encode_exr(Frame([Part(planes, (2**31 - 3, 0, 2**31 + 2, 3), (0, 0, 5, 3))]))
    odd = small_frame()
    odd.parts[0].attributes["bad"] = {"a": 1}
    with pytest.raises(ExrError, match="attribute 'bad'"):
        encode_exr(odd)
    assert os.listdir(tmp_path) == []
