"""mp4 writing: unique temporary files per writer, only complete files published, read back frame-exact; a
video cut short is refused when read, never scored in part."""

import os
import subprocess

import numpy as np
import pytest
from imageio_ffmpeg import get_ffmpeg_exe

from contextforcing.cli import main
from contextforcing.errors import UserError
from contextforcing.io.video import VideoWriter, count_frames, read_video


def _frames(n: int, value: int) -> np.ndarray:
    return np.full((n, 32, 32, 3), value, np.uint8)


def test_two_writers_on_one_path_never_share_a_file_and_each_publishes_whole_videos(tmp_path):
    path = tmp_path / "v.mp4"
    a, b = VideoWriter(path, 16), VideoWriter(path, 16)
    assert a.tmp != b.tmp and a.tmp.parent == b.tmp.parent == tmp_path
    a.write(_frames(5, 0))
    b.write(_frames(9, 255))
    a.write(_frames(2, 0))
    a.close()
    frames, _ = read_video(path)
    assert len(frames) == 7 and frames.max() < 20  # all of a's frames, none of b's
    b.close()
    frames, _ = read_video(path)
    assert len(frames) == 9 and frames.min() > 235
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_a_writer_without_frames_or_with_an_error_leaves_nothing(tmp_path):
    with VideoWriter(tmp_path / "empty.mp4", 16):
        pass
    try:
        with VideoWriter(tmp_path / "failed.mp4", 16) as writer:
            writer.write(_frames(3, 9))
            raise RuntimeError("a bug")
    except RuntimeError:
        pass
    assert os.listdir(tmp_path) == []


def test_count_frames_reads_what_a_player_would(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", 16) as writer:
        writer.write(_frames(11, 100))
    assert count_frames(tmp_path / "v.mp4") == 11
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "v.mp4").read_bytes()[:1000])
    assert count_frames(tmp_path / "cut.mp4") == 0


def _ffmpeg(*args: str) -> None:
    subprocess.run([get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], check=True)


def _faststart(tmp_path, frames: int):
    """An mp4 with its index first (as web tools write them): cut short, its header still lists every frame."""
    rng = np.random.default_rng(0)
    with VideoWriter(tmp_path / "plain.mp4", 16) as writer:
        writer.write(rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8))
    _ffmpeg("-i", str(tmp_path / "plain.mp4"), "-c", "copy", "-movflags", "+faststart", str(tmp_path / "fast.mp4"))
    return tmp_path / "fast.mp4"


def test_a_video_cut_short_is_refused_not_read_in_part(tmp_path, capsys):
    whole = _faststart(tmp_path, 69)
    assert len(read_video(whole)[0]) == 69
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(UserError) as err:
        read_video(cut)
    message = str(err.value)
    assert (
        message.startswith(f"video {cut} is truncated or damaged: ") and "of the 69 frames its header lists" in message
    )
    assert message.endswith("partial file)") and "@ 0x" not in message  # ffmpeg's reason, without its address
    assert main(["eval", str(cut), "--report", str(tmp_path / "report"), "--quiet"]) == 2  # eval scores no part of it
    assert capsys.readouterr().err == f"contextforcing: error: {message}\n" and not (tmp_path / "report").exists()


def test_a_whole_video_with_a_longer_sound_track_is_read(tmp_path):
    video = _faststart(tmp_path, 20)  # 1.25 s of frames, 3 s of sound: the container lasts 3 s
    _ffmpeg("-i", str(video), "-f", "lavfi", "-i", "sine=duration=3", "-c:v", "copy", str(tmp_path / "sound.mp4"))
    assert len(read_video(tmp_path / "sound.mp4")[0]) == 20
