"""The SQLite registry's cache keys are comparable across threads.

Every thread has its own SQLite connection, and SQLite numbers each connection's
``data_version`` on its own, so a raw number read in one thread says nothing about a number read
in another. Servers answer requests on pool threads and keep caches (the serving cache, the
workspace's specs) keyed by ``change_token()``/``data_version()``: a key read on a fresh thread
after another process's commit must not equal one read before it on another thread.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from contextkit.stores.registry import SQLiteRegistry


def on_new_thread(call):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def test_a_commit_by_another_process_changes_the_token_seen_on_a_fresh_thread(tmp_path) -> None:
    serving = SQLiteRegistry(tmp_path / "registry.db")
    before = serving.change_token()
    version_before = serving.data_version()
    assert serving.change_token() == before  # nothing committed: the key holds

    other = SQLiteRegistry(tmp_path / "registry.db")  # "another process"
    other.create_workspace("prod", live=True)

    assert on_new_thread(serving.change_token) != before
    assert on_new_thread(serving.data_version) != version_before
    assert serving.change_token() != before  # and on the thread that read the old key


def test_the_token_holds_across_threads_while_nothing_is_committed(tmp_path) -> None:
    serving = SQLiteRegistry(tmp_path / "registry.db")
    settled, version = serving.change_token(), serving.data_version()
    # a thread's first look is no change (a server's pool starts new workers at any time)
    assert on_new_thread(serving.change_token) == settled
    assert on_new_thread(serving.data_version) == version
    assert serving.change_token() == settled
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(serving.change_token).result()
        assert pool.submit(serving.change_token).result() == first
    assert serving.change_token() == first


def test_commits_from_this_registry_on_other_threads_and_after_close_move_the_key(tmp_path):
    serving = SQLiteRegistry(tmp_path / "registry.db")
    version = serving.data_version()
    on_new_thread(lambda: serving.create_workspace("dev", live=False))
    moved = serving.data_version()
    assert moved != version  # another thread's connection committed
    serving.close()  # connections released; the next read reconnects and counts once
    assert serving.data_version() not in (version, moved)
