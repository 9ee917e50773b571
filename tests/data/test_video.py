"""mp4 writing: unique temporary files per writer, only complete files published, read back frame-exact."""

import os

import numpy as np

from contextforcing.data.video import VideoWriter, count_frames, read_video


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
