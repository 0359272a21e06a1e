"""Temporal mode against a real server: the sequence state machine and lower warping error."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server import flow, temporal
from server.colour import srgb_encode
from server.flow import occlusion, warping_error
from vst_plugin import Client, Frame, Part
from vst_plugin.exr import read_exr
from vst_plugin.schema import TemporalSettings

VST = str(Path(sys.executable).parent / "vst")
WIDTH, HEIGHT = 128, 96
STEP = (2, 1)  # the camera pans: content moves 2 px left and 1 px up per frame
TEMPORAL = {"strength": 0.8}


@pytest.fixture(scope="module")
def photo(shared: Path) -> np.ndarray:
    part = read_exr(shared / "exr/ScanLines/Desk.exr").parts[0]
    return np.stack([part.channels[c] for c in "RGB"], axis=-1).astype(np.float32)


def pan_frame(photo: np.ndarray, t: int, vectors: bool = False) -> Frame:
    """Frame t of a pan over the photo, optionally with Nuke-style backward/forward motion vectors."""
    x, y = 200 + STEP[0] * t, 300 + STEP[1] * t
    crop = photo[y : y + HEIGHT, x : x + WIDTH]
    channels = {c: np.ascontiguousarray(crop[..., i]).astype(np.float16) for i, c in enumerate("RGB")}
    if vectors:  # backward: to frame t-1 (content was 2 px right, 1 px down there); v points up in Nuke
        channels["backward.u"] = np.full((HEIGHT, WIDTH), STEP[0], np.float16)
        channels["backward.v"] = np.full((HEIGHT, WIDTH), -STEP[1], np.float16)
        channels["forward.u"] = np.full((HEIGHT, WIDTH), -STEP[0], np.float16)
        channels["forward.v"] = np.full((HEIGHT, WIDTH), STEP[1], np.float16)
    window = (0, 0, WIDTH - 1, HEIGHT - 1)
    return Frame([Part(channels, window, window)])


def rgb01(frame: Frame) -> np.ndarray:
    """Lai et al. measure on RGB in 0..1: the sRGB-encoded, clipped colour."""
    rgb = np.stack([frame.parts[0].channels[c] for c in "RGB"], axis=-1).astype(np.float32)
    import torch

    return srgb_encode(torch.from_numpy(rgb).clamp(0, 1)).numpy()


def mean_warping_error(outputs: list[Frame]) -> float:
    forward = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    forward[...] = (-STEP[0], -STEP[1])
    valid = ~occlusion(forward, -forward)
    errors = [warping_error(rgb01(a), rgb01(b), forward, valid) for a, b in zip(outputs, outputs[1:], strict=False)]
    return float(np.mean(errors))


def same(a: Frame, b: Frame) -> bool:
    return all(np.array_equal(a.parts[0].channels[c], b.parts[0].channels[c]) for c in "RGB")


def moving_square(t: int, step: int = 6, flat: bool = True) -> np.ndarray:
    """Frame t (display RGB uint8): a textured square moving `step` px right per frame over a smooth
    gradient (flat) or over noise; the square covers x in [10 + step t, 42 + step t), y in [30, 62)."""
    rng = np.random.default_rng(1)
    if flat:
        background = np.broadcast_to(np.linspace(60, 140, WIDTH)[None, :, None], (HEIGHT, WIDTH, 3))
    else:  # texture: noise blurred to a few pixels' grain, full contrast
        import cv2

        grain = cv2.GaussianBlur(rng.uniform(0, 1, (HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 1.5)
        background = (grain - grain.min()) / (grain.max() - grain.min()) * 255
    image = np.array(background, np.float32)
    image[30:62, 10 + step * t : 42 + step * t] = rng.uniform(150, 255, (32, 32, 3))
    return image.astype(np.uint8)


def analysed_frames(frames: list[Frame], preset: str = "fast") -> list[temporal.LayerMotion]:
    """The server's motion analysis of one-layer frames, in order, each against the one before it."""
    from concurrent.futures import Future

    options = TemporalSettings(strength=0.8, preset=preset)
    motions, previous = [], None
    for frame in frames:
        done: Future = Future()
        done.set_result(temporal._analyse(previous, lambda f=frame: f, None, options))
        motions.append(next(iter(done.result()[1].values())))
        previous = done
    return motions


def analysed(frames: list[np.ndarray], preset: str = "fast") -> list[temporal.LayerMotion]:
    """The server's motion analysis of display frames, in order (linear plates made from them)."""
    plates = []
    for image in frames:
        linear = (image.astype(np.float32) / 255) ** 2.2
        channels = {c: np.ascontiguousarray(linear[..., i]) for i, c in enumerate("RGB")}
        window = (0, 0, image.shape[1] - 1, image.shape[0] - 1)
        plates.append(Frame([Part(channels, window, window)]))
    return analysed_frames(plates, preset)


plate_frames = st.lists(
    st.tuples(
        st.integers(1, 70), st.integers(1, 70), st.integers(-20, 20), st.integers(-20, 20),  # window size, offset
        st.sampled_from([0.01, 1.0, 50.0]),  # exposure
        st.sampled_from([None, "flat", float("nan"), float("inf"), -float("inf"), -5.0]),  # what spoils it
    ),
    min_size=2, max_size=4,
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(frames=plate_frames, preset=st.sampled_from(list(flow.PRESETS)))
def test_any_data_window_and_pixel_values_analyse_and_blend(frames, preset: str) -> None:
    """Windows from 1x1 up, moving and changing size; dark, bright, flat, NaN, infinite, negative pixels:
    every weight and flow finite, every blend finite and the frame's size."""
    rng = np.random.default_rng(len(frames))
    plates = []
    for width, height, x, y, exposure, spoil in frames:
        rgb = rng.random((height, width, 3), np.float32) * exposure
        if spoil == "flat":
            rgb[:] = 0.5
        elif spoil is not None:
            rgb[rng.random((height, width)) < 0.2] = spoil
        channels = {c: np.ascontiguousarray(rgb[..., i]).astype(np.float16) for i, c in enumerate("RGB")}
        plates.append(Frame([Part(channels, (x, y, x + width - 1, y + height - 1), (0, 0, 63, 63))]))
    memory: dict = {}
    for (width, height, *_), motion in zip(frames, analysed_frames(plates, preset), strict=True):
        for name in ("to_previous", "visible", "weight", "to_earlier", "visible_earlier"):
            value = getattr(motion, name)
            assert value is None or (value.shape[:2] == (height, width) and np.isfinite(value).all()), name
        stylized = torch.rand(1, 3, height, width)
        out = temporal.blend(stylized, motion if motion.to_previous is not None else None, memory, 0.8)
        assert out.shape == stylized.shape and bool(torch.isfinite(out).all())


def test_a_data_window_that_grows_mid_sequence_keeps_its_visibility() -> None:
    """Weights are found at 1/n of a large frame's size (n from its own data window): when the window
    grows past 640x360 between frames, the previous frame's display image is rescaled to the new n
    and the long-term term waits for two frames at the same n."""
    import cv2

    rng = np.random.default_rng(3)
    scene = cv2.GaussianBlur(rng.uniform(0, 1, (600, 1000, 3)).astype(np.float32), (0, 0), 2) ** 2.2
    windows = [(100, 80, 739, 431), (100, 80, 739, 431), (20, 20, 979, 563), (20, 20, 979, 563)]  # 640x352, 960x544
    plates = []
    for x0, y0, x1, y1 in windows:
        channels = {c: np.ascontiguousarray(scene[y0 : y1 + 1, x0 : x1 + 1, i]) for i, c in enumerate("RGB")}
        plates.append(Frame([Part(channels, (x0, y0, x1, y1), (x0, y0, x1, y1))]))
    motions = analysed_frames(plates)
    assert [m.step for m in motions] == [1, 1, 2, 2]
    grown = motions[2]
    assert grown.visible.shape == (544, 960) and grown.visible_earlier is None
    assert grown.visible[60:412, 80:720].mean() > 0.8  # the still scene where the smaller window showed it
    assert np.median(np.abs(grown.to_previous[60:412, 80:720] - (-80, -60))) < 0.5  # the previous window is offset
    assert motions[3].visible.mean() > 0.8 and motions[3].visible_earlier is not None


def test_visibility_keeps_flat_regions_and_drops_what_a_moving_object_reveals() -> None:
    first, second = analysed([moving_square(0), moving_square(1)])
    background = np.ones((HEIGHT, WIDTH), bool)
    background[24:68, 4:54] = False  # the square at both frames, with a margin
    kept = second.visible[background].mean()
    # the forward-backward + motion-boundary test on the same flow throws away flat background
    to_next = flow.estimate(first.grey, second.grey, "fast")
    ruder = 1 - occlusion(second.to_previous, to_next)[background].mean()
    print(f"flat background kept: soft weight {kept:.3f}, Ruder test {ruder:.3f}")
    assert kept > 0.9 and kept > ruder + 0.05, (kept, ruder)
    # over texture, what the square reveals is not taken from the previous frame
    revealed = analysed([moving_square(0, flat=False), moving_square(1, flat=False)])[1].visible[30:62, 10:16]
    assert revealed.mean() < 0.2, revealed.mean()


def test_coverage_finds_disocclusion() -> None:
    from_previous = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    from_previous[30:62, 10:42] = (6, 0)  # the square moves 6 px right
    covered = flow.coverage(from_previous)
    assert np.allclose(covered[30:62, 10:16], 0)  # revealed: nothing lands there
    assert np.allclose(covered[30:62, 16:42], 1)
    assert np.allclose(covered[30:62, 42:48], 2)  # the square and the background it now hides
    assert np.allclose(covered[:30], 1)


def test_fine_preset_follows_object_edges_better() -> None:
    frames = [moving_square(t, step=8) for t in range(2)]
    exact = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    exact[30:62, 18:50] = (-8, 0)  # frame 1 -> frame 0: the square's pixels came from 8 px left
    near = np.zeros((HEIGHT, WIDTH), bool)
    near[20:72, 8:60] = True
    errors = {}
    for preset in ("fast", "fine"):
        to_previous = analysed(frames, preset)[1].to_previous
        errors[preset] = float(np.linalg.norm(to_previous - exact, axis=-1)[near].mean())
    assert errors["fine"] < 0.7 * errors["fast"], errors


def test_long_term_blend_fills_from_the_frame_before_the_previous_one() -> None:
    """Background hidden at t-1 but seen at t-2 and t takes the result of t-2, not the per-frame one."""
    motions = analysed([moving_square(t, step=36, flat=False) for t in range(3)])
    hidden = (slice(32, 60), slice(50, 74))  # the square at t-1 (x 46..78), background at t-2 and t
    assert motions[2].visible[hidden].mean() < 0.2
    assert motions[2].visible_earlier[hidden].mean() > 0.6
    memory: dict = {}
    for motion, value in zip(motions, (0.2, 0.5, 0.9), strict=True):
        stylized = torch.full((1, 3, HEIGHT, WIDTH), value)
        out = temporal.blend(stylized, motion if motion.to_previous is not None else None, memory, 0.8)
    expected = 0.9 + 0.8 * temporal.LONG_TERM * (0.2 - 0.9)
    assert float(out[0, :, hidden[0], hidden[1]].mean()) == pytest.approx(expected, abs=0.15)


def test_background_the_previous_frame_revealed_is_blended_at_a_lower_share() -> None:
    """Background a moving object uncovered in the previous frame carries the network's response around
    the object: the next frame blends its result in at REVEALED_SHARE of its visibility weight, so that
    response fades faster behind the object; background shown for longer keeps its full weight."""
    motions = analysed([moving_square(t, flat=False) for t in range(3)], "medium")
    assert motions[1].weight is motions[1].visible  # its previous frame started the sequence: nothing revealed
    revealed = (slice(32, 60), slice(11, 15))  # uncovered at frame 1 (x 10..16), background since
    far = (slice(70, 96), slice(60, 128))
    assert motions[2].visible[revealed].mean() > 0.9
    settled = motions[2].weight[revealed] / motions[2].visible[revealed]
    assert settled.min() == pytest.approx(temporal.REVEALED_SHARE) and settled.mean() < 0.7, settled.mean()
    assert (motions[2].weight[far] / motions[2].visible[far]).min() == 1
    pulled = {}
    for weight in (motions[2].weight, motions[2].visible):
        memory = {"temporal_result": torch.full((1, 3, HEIGHT, WIDTH), 0.5)}
        out = temporal.blend(torch.full((1, 3, HEIGHT, WIDTH), 0.9), replace(motions[2], weight=weight), memory, 0.8)
        pulled[weight is motions[2].visible] = 0.9 - out[0, 0]
    assert float(pulled[True][revealed].mean()) > 0.25
    assert torch.allclose(pulled[False][revealed], torch.from_numpy(settled) * pulled[True][revealed], atol=1e-5)
    assert torch.equal(pulled[False][far], pulled[True][far])


def test_contrast_guard_restores_the_per_frame_contrast_up_to_its_limit() -> None:
    """Blending in a previous result of lower contrast would wash the frame out; the guard scales each
    channel about its mean back to CONTRAST_KEPT of the per-frame spread, by at most CONTRAST_GAIN,
    and leaves a small loss alone."""
    motions = analysed([moving_square(0, flat=False)] * 2)  # a still frame: everything visible, no motion
    texture = torch.from_numpy(moving_square(0, flat=False).astype(np.float32) / 255).permute(2, 0, 1)[None]
    for faded, expected in ((0.95, "alone"), (0.8, "restored"), (0.1, "limit")):
        memory = {"temporal_result": 0.5 + faded * (texture - 0.5)}
        out = temporal.blend(texture, motions[1], memory, 0.8)
        weight = 0.8 * torch.from_numpy(motions[1].visible)
        unguarded = texture + weight * (memory["temporal_earlier"] - texture)
        gain = out.std((2, 3)) / unguarded.std((2, 3))
        if expected == "limit":  # too washed out to restore fully: the gain stops at the limit
            assert torch.allclose(gain, torch.tensor(temporal.CONTRAST_GAIN), atol=0.02)
        elif expected == "alone":
            assert torch.allclose(gain, torch.ones(1, 3), atol=1e-3)
        else:
            assert torch.allclose(out.std((2, 3)), temporal.CONTRAST_KEPT * texture.std((2, 3)), rtol=0.02)
        assert torch.allclose(out.mean((2, 3)), unguarded.mean((2, 3)), atol=0.01)
        assert memory["temporal_result"] is out


def test_temporal_mode_lowers_the_warping_error_of_a_pan(server_address: str, photo: np.ndarray) -> None:
    frames = [pan_frame(photo, t) for t in range(8)]
    with Client(server_address, timeout=60) as client:
        per_frame = [client.stylize(f, params={"style": 19}) for f in frames]
        temporal = [
            client.stylize(f, params={"style": 19}, sequence="pan", frame_number=t, temporal=TEMPORAL)
            for t, f in enumerate(frames)
        ]
    before, after = mean_warping_error(per_frame), mean_warping_error(temporal)
    print(f"warping error per-frame {before:.5f}, temporal {after:.5f}, ratio {after / before:.3f}")
    assert after < 0.6 * before, (before, after)


def test_tiny_data_windows_are_stylized_temporally(server_address: str, photo: np.ndarray) -> None:
    # a CG element's data window can be a few pixels: OpenCV DIS refuses images under 12 px and, with
    # the 4x4 patches of `medium`, crashed the process on some (6x6, 7x40)
    display = (0, 0, WIDTH - 1, HEIGHT - 1)
    with Client(server_address, timeout=60) as client:
        for width, height in ((6, 6), (40, 7), (400, 3), (1, 1)):
            for preset in flow.PRESETS:
                for t in range(3):
                    crop = photo[300 + t : 300 + t + height, 200 + 2 * t : 200 + 2 * t + width]
                    channels = {c: np.ascontiguousarray(crop[..., i]).astype(np.float16) for i, c in enumerate("RGB")}
                    window = (10 + t, 20, 10 + t + width - 1, 20 + height - 1)
                    out = client.stylize(Frame([Part(channels, window, display)]), sequence=f"tiny{width}{preset}",
                                         frame_number=t, temporal={**TEMPORAL, "preset": preset})
                    assert out.parts[0].data_window == window
                    assert np.isfinite(out.parts[0].channels["R"].astype(np.float32)).all()
        assert client.stylize(pan_frame(photo, 0)).parts[0].channels["R"].shape == (HEIGHT, WIDTH)


def test_host_motion_vectors_are_used_when_present(server_address: str, photo: np.ndarray) -> None:
    frames = [pan_frame(photo, t, vectors=True) for t in range(6)]
    with Client(server_address, timeout=60) as client:
        per_frame = [client.stylize(f, params={"style": 7}) for f in frames]
        with_vectors = [
            client.stylize(f, params={"style": 7}, sequence="vec", frame_number=t, temporal=TEMPORAL)
            for t, f in enumerate(frames)
        ]
        wrong_way = [
            client.stylize(f, params={"style": 7}, sequence="up", frame_number=t, temporal={**TEMPORAL, "y_up": False})
            for t, f in enumerate(frames)
        ]
    good = mean_warping_error(with_vectors)
    assert good < 0.6 * mean_warping_error(per_frame)
    assert good < mean_warping_error(wrong_way)  # the vectors were read, with Nuke's y-up convention


def test_state_follows_frame_order_and_resets_on_jumps_repeats_and_scrubs(
    server_address: str, photo: np.ndarray
) -> None:
    frames = {t: pan_frame(photo, t) for t in range(1, 7)}
    with Client(server_address, timeout=60) as client:
        alone = {t: client.stylize(f, params={"style": 3}) for t, f in frames.items()}

        def temporal(t: int, sequence: str = "shot") -> Frame:
            return client.stylize(frames[t], params={"style": 3}, sequence=sequence, frame_number=t, temporal=TEMPORAL)

        assert same(temporal(1), alone[1])  # a sequence's first frame has nothing to blend
        assert not same(temporal(2), alone[2])  # in order: the previous result is blended in
        assert same(temporal(5), alone[5])  # a jump starts anew
        assert same(temporal(5), alone[5])  # a repeated frame too
        assert not same(temporal(6), alone[6])
        assert same(temporal(4), alone[4])  # a scrub backwards starts anew
        assert client.reset("shot") is True
        assert same(temporal(5), alone[5])  # after a reset, the next frame starts anew


def test_two_clients_on_two_sequences_keep_their_own_state(server_address: str, photo: np.ndarray) -> None:
    pan = [pan_frame(photo, t) for t in range(3)]
    other = [pan_frame(photo[::-1].copy(), t) for t in range(3)]  # a different picture, same sequence id
    options = {"params": {"style": 11}, "sequence": "s", "temporal": TEMPORAL}
    with Client(server_address, timeout=60) as first, Client(server_address, timeout=60) as second:
        mixed = []
        for t in range(3):  # interleaved, both in flight at once
            a = first.submit(pan[t], frame_number=t, **options)
            b = second.submit(other[t], frame_number=t, **options)
            mixed.append((first.result(a), second.result(b)))
    with Client(server_address, timeout=60) as alone:
        reference = [alone.stylize(pan[t], frame_number=t, **options) for t in range(3)]
    assert all(same(result, expected) for (result, _), expected in zip(mixed, reference, strict=True))


def test_state_of_a_vanished_client_expires(photo: np.ndarray, vst_server) -> None:
    with vst_server("--sequence-ttl", "1") as address:
        frames = [pan_frame(photo, t) for t in range(2)]
        with Client(address, timeout=120) as client:
            alone = client.stylize(frames[1], params={"style": 2})
            client.stylize(frames[0], params={"style": 2}, sequence="x", frame_number=0, temporal=TEMPORAL)
            time.sleep(1.5)
            late = client.stylize(frames[1], params={"style": 2}, sequence="x", frame_number=1, temporal=TEMPORAL)
        assert same(late, alone)


def test_temporal_needs_sequence_and_frame_numbers(server_address: str, photo: np.ndarray) -> None:
    from vst_plugin import ServerError

    with Client(server_address) as client:
        with pytest.raises(ServerError, match="sequence"):
            client.stylize(pan_frame(photo, 0), temporal=TEMPORAL)
        with pytest.raises(ServerError, match="0..1"):
            client.stylize(pan_frame(photo, 0), sequence="s", frame_number=1, temporal={"strength": 3})
        assert {p["name"] for p in client.hello()["capabilities"]["temporal"]} >= {"strength", "preset", "y_up"}


def test_render_temporal_and_eval_commands(server_address: str, photo: np.ndarray, tmp_path: Path) -> None:
    from vst_plugin.exr import write_exr

    for t in range(1, 7):
        write_exr(pan_frame(photo, t), str(tmp_path / f"plate.{t:04d}.exr"))
        flow = pan_frame(photo, t, vectors=True)
        for name in "RGB":
            del flow.parts[0].channels[name]
        write_exr(flow, str(tmp_path / f"flow.{t:04d}.exr"))
    common = ["--frames", "2-6", "--style", "19", "--server", server_address]
    renders = {
        "single": subprocess.run([VST, "render", str(tmp_path / "plate.####.exr"), str(tmp_path / "single.####.exr"),
                                  *common], capture_output=True, text=True, timeout=600),
        "temporal": subprocess.run([VST, "render", str(tmp_path / "plate.####.exr"), str(tmp_path / "temp.####.exr"),
                                    *common, "--temporal", "--preroll", "1"], capture_output=True, text=True,
                                   timeout=600),
    }
    for done in renders.values():
        assert done.returncode == 0, done.stderr

    def warping(pattern: str, *flow: str) -> float:
        done = subprocess.run([VST, "eval", "temporal", str(tmp_path / pattern), "--frames", "2-6", *flow, "--json"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        import json

        report = json.loads(done.stdout)
        assert [pair["frames"] for pair in report["pairs"]] == [[2, 3], [3, 4], [4, 5], [5, 6]]
        return report["mean"]

    gt = ("--gt-flow", str(tmp_path / "flow.####.exr"))
    estimated = ("--flow-from", str(tmp_path / "plate.####.exr"))
    assert warping("temp.####.exr", *gt) < 0.6 * warping("single.####.exr", *gt)
    assert warping("temp.####.exr", *estimated) < 0.6 * warping("single.####.exr", *estimated)
    missing = subprocess.run([VST, "eval", "temporal", str(tmp_path / "temp.####.exr"), "--frames", "2-6"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--flow-from" in missing.stderr
