"""Local table snapshots: read back exactly, trusted only when whole, for this table, still
inside the changelog and younger than compaction's tombstone retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import snapshot

ROWS = {b"u-1": b"\x01abc", b"u-2": b"", "ユーザー".encode(): b"{}" * 1000}


def written(tmp_path: Path, offset: int = 42, now_s: float = 1_000.0) -> Path:
    path = snapshot.path_for(tmp_path, "app-user-state-changelog", 3)
    snapshot.write(path, "app-user-state-changelog", 3, offset, ROWS, now_s)
    return path


def test_a_snapshot_reads_back_its_rows_and_offset(tmp_path: Path) -> None:
    found = snapshot.read(written(tmp_path), "app-user-state-changelog", 3)
    assert found is not None
    assert (found.rows, found.offset, found.written_s) == (ROWS, 42, 1_000.0)
    assert list(tmp_path.iterdir()) == [written(tmp_path)]  # no temporary file left


def test_no_snapshot_means_a_full_restore(tmp_path: Path) -> None:
    assert snapshot.read(tmp_path / "none.snapshot", "t", 0) is None


@pytest.mark.parametrize("damage", ["cut", "flip", "header"])
def test_a_damaged_snapshot_is_ignored_with_a_warning(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = written(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "cut":
        del data[-7:]
    elif damage == "flip":
        data[-3] ^= 0xFF
    else:
        data[:1] = b"["
    path.write_bytes(bytes(data))
    assert snapshot.read(path, "app-user-state-changelog", 3) is None
    assert "snapshot.ignored" in caplog.text


def test_another_tables_snapshot_is_never_used(tmp_path: Path) -> None:
    path = written(tmp_path)
    assert snapshot.read(path, "app-user-state-changelog", 2) is None
    assert snapshot.read(path, "app-link-state-changelog", 3) is None


@pytest.mark.parametrize(
    ("start", "end", "age_s", "usable"),
    [
        (0, 42, 0, True),  # nothing written since
        (0, 900, 60, True),  # the tail after it is read
        (0, 41, 0, False),  # the changelog is shorter: recreated or truncated
        (50, 900, 0, False),  # records it needs were deleted
        (0, 900, snapshot.MAX_AGE_S + 1, False),  # tombstones may have been compacted away
    ],
)
def test_a_snapshot_is_used_only_inside_the_changelog_and_while_young(
    tmp_path: Path, start: int, end: int, age_s: float, usable: bool
) -> None:
    found = snapshot.read(written(tmp_path), "app-user-state-changelog", 3)
    assert found is not None
    assert snapshot.usable(found, start=start, end=end, now_s=1_000.0 + age_s) is usable
