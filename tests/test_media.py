"""`vst render` on image sequences and movies (issue 11 items 2, 3, 4): real files through a real server.

PNG, TIFF, DPX and JPEG files are written here with OpenImageIO from crops of real footage; the H.264 and
ProRes movies are cut by the tests from ../shared/video/bigbuckbunny.mp4 (a few frames, 128x72, with the
audio of those frames). The identity model is used where the style does not matter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import OpenImageIO as oiio
import pytest

from vst_plugin.media import MovieReader

VST = str(Path(sys.executable).parent / "vst")
FRAMES = 4
WIDTH, HEIGHT = 128, 72


def vst(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VST, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def footage(bbb_frames) -> list[np.ndarray]:
    return bbb_frames(FRAMES)


def cut_movie(shared: Path, path: Path, frames: list[np.ndarray], encoder: str, pixel_format: str,
              timecode: str | None = None, keyframes: int | None = None) -> None:
    """Encode `frames` at 25 fps with the source's audio for the same time, as an editor's cut would."""
    with av.open(str(shared / "video/bigbuckbunny.mp4")) as source, av.open(str(path), "w") as out:
        if timecode:
            out.metadata["timecode"] = timecode
        video = out.add_stream(encoder, rate=25)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, pixel_format
        if keyframes:
            video.options = {"g": str(keyframes)}
        audio_in = source.streams.audio[0]
        audio = out.add_stream_from_template(audio_in)
        for index, rgb in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format=pixel_format, src_colorspace="ITU709", dst_colorspace="ITU709")
            picture.pts = index
            out.mux(video.encode(picture))
        out.mux(video.encode(None))
        for packet in source.demux(audio_in):
            if packet.pts is None or packet.pts * audio_in.time_base >= Fraction(len(frames), 25):
                break
            packet.stream = audio
            out.mux(packet)


def write_sequence(folder: Path, pattern: str, frames: list[np.ndarray], pixel_type: str, bits: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, rgb in enumerate(frames, start=1):
        spec = oiio.ImageSpec(WIDTH, HEIGHT, 3, pixel_type)
        if bits == 10:
            spec.attribute("oiio:BitsPerSample", 10)
        out = oiio.ImageOutput.create(str(folder / (pattern % number)))
        assert out.open(str(folder / (pattern % number)), spec)
        assert out.write_image(rgb.astype(np.float32) / 255) and out.close()


def read(path: Path) -> tuple[np.ndarray, oiio.ImageSpec]:
    buffer = oiio.ImageBuf(str(path))
    return buffer.get_pixels(oiio.FLOAT), buffer.spec()


def test_png_sequence_without_frames_renders_every_frame_on_disk(
    tmp_path: Path, footage: list[np.ndarray]
) -> None:
    write_sequence(tmp_path / "in", "plate.%04d.png", footage, "uint8", 8)
    done = vst("render", "in/plate.####.png", "out/styled.####.png", "--embedded", "--style", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PNG sequence, 8-bit (display-referred)" in done.stderr and "srgb_tx" in done.stderr
    for number in range(1, FRAMES + 1):
        pixels, spec = read(tmp_path / f"out/styled.{number:04d}.png")
        original, _ = read(tmp_path / f"in/plate.{number:04d}.png")
        assert (spec.width, spec.height, spec.nchannels, str(spec.format)) == (WIDTH, HEIGHT, 3, "uint8")
        assert np.abs(pixels - original).mean() > 0.05  # stylized
    assert not (tmp_path / "out/styled.0005.png").exists()


@pytest.mark.parametrize(
    ("extension", "pixel_type", "bits"), [("tif", "uint16", 16), ("dpx", "uint16", 10), ("png", "uint16", 16)]
)
def test_integer_sequences_come_back_at_their_depth_and_encoding(
    tmp_path: Path, footage: list[np.ndarray], server_address: str, extension: str, pixel_type: str, bits: int
) -> None:
    """Strength 0 through the sRGB default gives the plates back: the same depth, the same encoding."""
    write_sequence(tmp_path, f"p.%04d.{extension}", footage[:2], pixel_type, bits)
    done = vst("render", f"p.####.{extension}", f"out/p.%04d.{extension}", "--server", server_address,
               "--strength", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{bits}-bit (display-referred)" in done.stderr
    for number in (1, 2):
        pixels, spec = read(tmp_path / f"out/p.{number:04d}.{extension}")
        original, _ = read(tmp_path / f"p.{number:04d}.{extension}")
        assert str(spec.format) == pixel_type
        assert spec.get_int_attribute("oiio:BitsPerSample", 16) == bits
        assert np.abs(pixels - original).max() < 2 / 255  # a round trip through linear, not a shift


def test_a_single_jpeg_renders_that_file(tmp_path: Path, footage: list[np.ndarray], server_address: str) -> None:
    oiio.ImageBuf(footage[0]).write(str(tmp_path / "still.jpg"))
    done = vst("render", "still.jpg", "still_styled.tif", "--server", server_address, "--style", "5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pixels, spec = read(tmp_path / "still_styled.tif")
    assert (spec.width, spec.height, str(spec.format)) == (WIDTH, HEIGHT, "uint8")


def test_exr_sequence_to_png_and_explicit_colour_space(
    tmp_path: Path, footage: list[np.ndarray], server_address: str
) -> None:
    write_sequence(tmp_path, "lin.%04d.exr", footage[:1], "half", 16)
    done = vst("render", "lin.####.exr", "out.####.png", "--server", server_address, "--model", "identity",
               "--input-colorspace", "raw", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "EXR sequence (scene-linear)" in done.stderr and "raw (given by --input-colorspace)" in done.stderr
    pixels, spec = read(tmp_path / "out.0001.png")
    assert np.abs(pixels - footage[0] / 255).max() < 1 / 255 and spec.format != oiio.FLOAT


def test_scene_linear_plates_are_encoded_for_display_outputs(
    tmp_path: Path, footage: list[np.ndarray], server_address: str
) -> None:
    """Linear EXR into PNG or a movie: the results are converted to sRGB / Rec.709, not written linear."""
    encoded = footage[0].astype(np.float32) / 255
    linear = np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)  # sRGB decode
    spec = oiio.ImageSpec(WIDTH, HEIGHT, 3, "float")
    out = oiio.ImageOutput.create(str(tmp_path / "lin.0001.exr"))
    assert out.open(str(tmp_path / "lin.0001.exr"), spec) and out.write_image(linear) and out.close()
    done = vst("render", "lin.####.exr", "out.####.png", "--server", server_address, "--model", "identity",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "results are converted to srgb_tx" in done.stderr
    pixels, _ = read(tmp_path / "out.0001.png")
    assert np.abs(pixels - encoded).max() < 1.5 / 255
    done = vst("render", "lin.####.exr", "out.mov", "--server", server_address, "--model", "identity",
               cwd=tmp_path)
    assert done.returncode == 0 and "converted to g24_rec709_tx" in done.stderr, done.stderr
    green = MovieReader(str(tmp_path / "out.mov")).read(1).parts[0].channels["G"].astype(np.float32)
    assert np.abs(green - linear[..., 1] ** (1 / 2.4)).mean() < 0.01


def test_h264_to_prores_keeps_rate_size_and_audio(tmp_path: Path, shared: Path, footage: list[np.ndarray]) -> None:
    cut_movie(shared, tmp_path / "in.mp4", footage, "libx264", "yuv420p")
    done = vst("render", "in.mp4", "out.mov", "--embedded", "--style", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "movie, 128x72 at 25 fps, 8-bit" in done.stderr and "g24_rec709_tx" in done.stderr
    with av.open(str(tmp_path / "out.mov")) as movie:
        video = movie.streams.video[0]
        assert (video.codec_context.name, video.codec_context.profile) == ("prores", "HQ")
        assert (video.width, video.height, video.average_rate, video.frames) == (WIDTH, HEIGHT, 25, FRAMES)
        assert movie.streams.audio and movie.streams.audio[0].codec_context.name == "aac"
    source = MovieReader(str(tmp_path / "in.mp4"))
    result = MovieReader(str(tmp_path / "out.mov"))
    assert result.bits == 10 and result.frames == source.frames == list(range(1, FRAMES + 1))
    before, after = source.read(2).parts[0].channels["G"], result.read(2).parts[0].channels["G"]
    assert np.abs(after.astype(np.float32) - before.astype(np.float32)).mean() > 0.05  # stylized


def test_prores_to_h264_carries_the_timecode_of_the_first_frame(
    tmp_path: Path, shared: Path, footage: list[np.ndarray], server_address: str
) -> None:
    cut_movie(shared, tmp_path / "in.mov", footage, "prores_ks", "yuv422p10le", timecode="01:00:10:00")
    done = vst("render", "in.mov", "out.mp4", "--server", server_address, "--frames", "2-4", "--model", "identity",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "10-bit" in done.stderr
    with av.open(str(tmp_path / "out.mp4")) as movie:
        video = movie.streams.video[0]
        assert (video.codec_context.name, video.frames, video.average_rate) == ("h264", 3, 25)
        assert video.metadata.get("timecode", movie.metadata.get("timecode")) == "01:00:10:01"
        assert movie.streams.audio
    source, result = MovieReader(str(tmp_path / "in.mov")), MovieReader(str(tmp_path / "out.mp4"))
    for number in (1, 2, 3):  # the identity model: frames 2-4 come back, H.264 loses a little
        before = source.read(number + 1).parts[0].channels["G"].astype(np.float32)
        assert np.abs(result.read(number).parts[0].channels["G"] - before).mean() < 0.02


def test_movie_to_image_sequence_and_codec_choice(
    tmp_path: Path, shared: Path, footage: list[np.ndarray], server_address: str
) -> None:
    cut_movie(shared, tmp_path / "in.mp4", footage, "libx264", "yuv420p")
    done = vst("render", "in.mp4", "f.####.png", "--server", server_address, "--model", "identity", "--frames",
               "1-2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["f.0001.png", "f.0002.png", "in.mp4"]  # no leftovers
    done = vst("render", "in.mp4", "h.mov", "--codec", "h264", "--server", server_address, "--model", "identity",
               "--frames", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "h.mov")) as movie:
        assert (movie.streams.video[0].codec_context.name, movie.streams.video[0].frames) == ("h264", 1)
    done = vst("render", "in.mp4", "d.mxf", "--server", server_address, "--model", "identity", cwd=tmp_path)
    assert done.returncode == 1 and "DNxHR needs frames of at least 256x120" in done.stderr
    assert not (tmp_path / "d.mxf").exists()
    done = vst("render", "in.mp4", "f.####.png", "--codec", "h264", "--server", server_address, cwd=tmp_path)
    assert done.returncode == 1 and "--codec applies to movies" in done.stderr


@pytest.mark.parametrize("how", ["same pattern", "symlinked folder", "hard link", "movie"])
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(
    tmp_path: Path, shared: Path, footage: list[np.ndarray], server_address: str, how: str
) -> None:
    write_sequence(tmp_path / "plates", "p.%04d.png", footage[:2], "uint8", 8)
    before = {path.name: path.read_bytes() for path in (tmp_path / "plates").iterdir()}
    (tmp_path / "link").symlink_to(tmp_path / "plates")
    os.link(tmp_path / "plates/p.0002.png", tmp_path / "other.0002.png")
    inputs, output = "plates/p.####.png", {
        "same pattern": "plates/p.####.png",
        "symlinked folder": "link/p.%04d.png",
        "hard link": "other.####.png",
        "movie": "in.mp4",
    }[how]
    if how == "movie":
        cut_movie(shared, tmp_path / "in.mp4", footage[:2], "libx264", "yuv420p")
        inputs = "in.mp4"
    done = vst("render", inputs, output, "--server", server_address, "--model", "identity", cwd=tmp_path)
    assert done.returncode == 1 and "would overwrite the plates" in done.stderr, done.stderr
    assert {path.name: path.read_bytes() for path in (tmp_path / "plates").iterdir()} == before


def test_straight_alpha_png_keeps_its_alpha_and_colour(
    tmp_path: Path, footage: list[np.ndarray], server_address: str
) -> None:
    """PNG alpha is straight (unassociated): it comes back bit for bit and the colour is not premultiplied."""
    alpha = np.zeros((HEIGHT, WIDTH, 1), np.uint8)
    alpha[:, WIDTH // 4 :] = 255
    alpha[:, WIDTH // 2 :] = 96
    rgba = np.concatenate([footage[0], alpha], axis=-1)
    image = oiio.ImageBuf(rgba)
    image.specmod().attribute("oiio:UnassociatedAlpha", 1)  # these values are straight colour, as PNG holds
    assert image.write(str(tmp_path / "a.png"))
    done = vst("render", "a.png", "b.png", "--server", server_address, "--strength", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = oiio.ImageBuf(str(tmp_path / "b.png"), 0, 0, _unassociated())
    pixels = result.get_pixels(oiio.UINT8)
    assert np.array_equal(pixels[..., 3], alpha[..., 0])
    visible = alpha[..., 0] > 0
    assert np.abs(pixels[..., :3].astype(int) - footage[0].astype(int))[visible].max() <= 2


def _unassociated() -> oiio.ImageSpec:
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)
    return config


def test_a_movie_streams_through_a_few_frames_of_memory(shared: Path) -> None:
    """Reading 40 frames of 1280x720 footage holds about one frame at a time, not the movie."""
    import tracemalloc

    movie = MovieReader(str(shared / "video/bigbuckbunny.mp4"))
    assert len(movie.frames) == 132 and movie.rate == 25
    frame_bytes = 1280 * 720 * 3 * 2  # half planes
    tracemalloc.start()
    try:
        total = 0
        for number in range(1, 41):
            total += sum(plane.nbytes for plane in movie.read(number).parts[0].channels.values())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        movie.close()
    assert total == 40 * frame_bytes
    assert peak < 4 * frame_bytes, peak


def test_beachball_sequence_renders_every_frame_with_its_moving_window(
    tmp_path: Path, shared: Path, server_address: str
) -> None:
    """No --frames: the 8 frames on disk; each output keeps its own data window and every channel."""
    def header(path: Path) -> tuple[tuple[int, int, int, int], tuple[str, ...]]:
        spec = oiio.ImageInput.open(str(path)).spec()
        return (spec.x, spec.y, spec.width, spec.height), tuple(spec.channelnames)

    done = vst("render", str(shared / "exr/Beachball/singlepart.####.exr"), "out/bb.####.exr", "--server",
               server_address, "--model", "identity", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "EXR sequence (scene-linear), 8 frame(s); colour space lin_rec709" in done.stderr
    windows = set()
    for number in range(1, 9):
        result = header(tmp_path / f"out/bb.{number:04d}.exr")
        assert result == header(shared / f"exr/Beachball/singlepart.{number:04d}.exr")
        windows.add(result[0])
    assert len(windows) == 8  # the window moves every frame


def test_movie_frames_read_in_any_order_are_the_frames_read_in_order(tmp_path: Path, shared: Path, bbb_frames) -> None:
    """Going back or far ahead seeks to a keyframe; the frame found is the one its number names."""
    cut_movie(shared, tmp_path / "gop.mp4", bbb_frames(60), "libx264", "yuv420p", keyframes=6)
    reader = MovieReader(str(tmp_path / "gop.mp4"))
    in_order = [reader.read(number).parts[0].channels["G"] for number in reader.frames]
    assert len(in_order) == 60
    for number in (59, 3, 55, 1, 60, 2, 30):
        assert np.array_equal(reader.read(number).parts[0].channels["G"], in_order[number - 1]), number
    reader.close()
