"""`vst eval temporal` on plates whose data window moves between frames, with per-view motion vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from server import flow
from server.evaluate import evaluate_temporal, scoring_flow
from vst_plugin.exr import read_exr, write_exr
from vst_plugin.frame import Frame, Part

ROOT = Path(__file__).resolve().parents[1]
VST = str(Path(sys.executable).parent / "vst")
MOTION = {"right": (5, 2), "left": (3, -1)}  # pixels per frame, x right and y down, per view
SIZE = 96


def eval_temporal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VST, "eval", "temporal", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def moving_stereo(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """Frames 1-4 of two real crops (one per eye) that move with their data windows, Nuke-style
    forward and backward vectors per view (v up), right the default view: a moving CG element in stereo."""
    folder = tmp_path_factory.mktemp("moving")
    photo = read_exr(shared / "exr/ScanLines/Desk.exr").parts[0]
    crops = {view: {c: np.ascontiguousarray(photo.channels[c][y : y + SIZE, 200 : 200 + SIZE]) for c in "RGB"}
             for view, y in (("right", 100), ("left", 104))}
    for t in range(1, 5):
        x0, y0 = 300 + MOTION["right"][0] * t, 200 + MOTION["right"][1] * t
        dx, dy = MOTION["left"][0] * t - MOTION["right"][0] * t, MOTION["left"][1] * t - MOTION["right"][1] * t
        channels: dict[str, np.ndarray] = {}
        # one data window holds both eyes' elements: the right one at its top left, the left one where it moved
        width, height = SIZE + 40, SIZE + 40
        for view, (mx, my) in MOTION.items():
            prefix = "" if view == "right" else "left."
            ox, oy = (20, 20) if view == "right" else (20 + dx, 20 + dy)
            for c in "RGB":
                plane = np.zeros((height, width), np.float16)
                plane[oy : oy + SIZE, ox : ox + SIZE] = crops[view][c]
                channels[prefix + c] = plane
            for name, sign in (("forward", 1), ("backward", -1)):
                for axis, value in (("u", sign * mx), ("v", -sign * my)):
                    plane = np.zeros((height, width), np.float16)
                    plane[oy : oy + SIZE, ox : ox + SIZE] = value
                    channels[f"{name}.{view}.{axis}"] = plane
        window = (x0 - 20, y0 - 20, x0 - 20 + width - 1, y0 - 20 + height - 1)
        part = Part(channels, window, (0, 0, 1919, 1079), attributes={"multiView": ("right", "left")})
        write_exr(Frame([part]), folder / f"ball.{t:04d}.exr")
    return folder


def test_moving_windows_and_per_view_vectors_measure_a_rigid_motion_as_stable(moving_stereo: Path) -> None:
    plates = str(moving_stereo / "ball.####.exr")
    done = eval_temporal(plates, "--frames", "1-4", "--gt-flow", plates, "--json")
    assert done.returncode == 0, done.stderr
    pairs = json.loads(done.stdout)["pairs"]
    assert [(p["frames"], p["view"]) for p in pairs] == [
        ([t, t + 1], view) for t in (1, 2, 3) for view in ("right", "left")
    ]
    assert max(p["warping_error"] for p in pairs) < 1e-6  # each eye moves exactly by its own vectors


def test_the_other_eyes_vectors_would_not_fit(moving_stereo: Path, tmp_path: Path) -> None:
    for t in range(1, 5):  # swap the views' vectors: a measure that ignored views would not notice
        frame = read_exr(moving_stereo / f"ball.{t:04d}.exr")
        channels = frame.parts[0].channels
        for name in ("forward", "backward"):
            for axis in "uv":
                right, left = f"{name}.right.{axis}", f"{name}.left.{axis}"
                channels[right], channels[left] = channels[left], channels[right]
        write_exr(frame, tmp_path / f"swapped.{t:04d}.exr")
    report = evaluate_temporal(str(moving_stereo / "ball.####.exr"), [1, 2, 3, 4],
                               gt_flow=str(tmp_path / "swapped.####.exr"))
    assert min(pair.error for pair in report.pairs) > 1e-3


def test_estimated_flow_on_the_moving_beachball_sample() -> None:
    plates = str(ROOT / "samples/beachball/beachball.####.exr")  # data window moves ~100 px a frame
    done = eval_temporal(plates, "--frames", "1-3", "--flow-from", plates)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["1 -> 2 (right)", "1 -> 2 (left)", "2 -> 3 (right)",
                                                         "2 -> 3 (left)"]
    assert float(lines[-1].split(":")[1]) < 0.01  # the plates against themselves: only flow error remains


def test_multipart_stereo_flow_files_are_read_per_view(shared: Path) -> None:
    plates = str(shared / "exr/Beachball/multipart.####.exr")  # vectors in parts of their own, per view
    report = evaluate_temporal(plates, [1, 2], gt_flow=plates)
    assert "no backward vectors" in report.notes[0]
    assert [(pair.view, np.isfinite(pair.error)) for pair in report.pairs] == [("right", True), ("left", True)]


@pytest.mark.parametrize("shift", [(2, -1), (37, -12)])
def test_scoring_flow_finds_small_and_large_motions(shared: Path, shift: tuple[int, int]) -> None:
    photo = read_exr(shared / "exr/ScanLines/Desk.exr").parts[0]
    rgb = np.stack([photo.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
    grey = flow.gray8(rgb * 0.3 / np.percentile(rgb, 75))
    dx, dy = shift  # the target shows the source's content moved by (dx, dy)
    source, target = grey[240:400, 300:500], grey[240 - dy : 400 - dy, 300 - dx : 500 - dx]
    found = scoring_flow(source, target)
    seen = found[max(0, -dy) + 8 : 160 - max(0, dy) - 8, max(0, -dx) + 8 : 200 - max(0, dx) - 8]
    assert np.allclose(np.median(seen.reshape(-1, 2), axis=0), shift, atol=0.05)
    assert np.mean(np.linalg.norm(seen - np.array(shift, np.float32), axis=-1) < 0.5) > 0.8
