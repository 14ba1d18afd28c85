"""What the Redis online store does differently on a Redis Cluster: reads batched per master,
a generation's rows written per master, keys unlinked on every master.

See the ``redis_online`` module docstring (section *Redis Cluster*) for the key layout. These
helpers talk to each master over its own connection with pre-packed commands: redis-py's
cluster pipeline resolves a routing policy per command, which costs more than Redis itself
once a request reads a hundred keys (one MGET per slot).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from contextkit.stores._redis_keyspace import resp_bulk, resp_command, slot_of


class ClusterBatch:
    """A read pipeline over a cluster: commands queued with the slot of their first key, then
    sent to every master they route to at once (all masters written before any is read), and
    the replies read back in order. One round trip per master, in parallel; each master gets
    its commands in queue order on one connection.

    A master that moved slots (MOVED/ASK) or could not be reached refreshes the slot map and
    the whole batch runs once more (reads only, so running them twice is harmless); the second
    failure is raised."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster
        self._commands: list[tuple[int, bytes]] = []  # (slot, the packed command)
        self._finish: dict[int, Callable[[Any], Any]] = {}

    def __len__(self) -> int:
        return len(self._commands)

    def execute_command(self, *args: Any) -> None:
        self._commands.append((slot_of(args[1]), resp_command(_encode(args))))

    def mget(self, slot: int, keys: Sequence[str]) -> None:
        """MGET of ``keys``, all in ``slot`` (packed here: the hot path of a request)."""
        packed = b"".join(resp_bulk(k.encode()) for k in keys)
        self._commands.append((slot, b"*%d\r\n$4\r\nMGET\r\n%b" % (len(keys) + 1, packed)))

    def hget(self, name: str, key: str) -> None:
        self.execute_command("HGET", name, key)

    def hgetall(self, name: str) -> None:
        self._finish[len(self._commands)] = _as_dict
        self.execute_command("HGETALL", name)

    def execute(self) -> list[Any]:
        import redis

        retried = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.AskError)
        try:
            replies = self._send()
        except retried:  # MovedError is an AskError
            self._refresh()
            replies = self._send()
        for i, finish in self._finish.items():
            replies[i] = finish(replies[i])
        return replies

    def _refresh(self) -> None:
        """Read the slot map again (after a failover or a resharding), best effort: when no
        master answers, the batch's second try raises the error that says so."""
        import redis
        from redis.exceptions import RedisClusterException

        with suppress(redis.RedisError, RedisClusterException):
            self._cluster.nodes_manager.initialize()

    def _send(self) -> list[Any]:
        import redis

        cluster = self._cluster
        nodes = cluster.nodes_manager
        routes: dict[str, tuple[Any, list[int]]] = {}
        owners: dict[int, Any] = {}
        for i, (slot, _packed) in enumerate(self._commands):
            node = owners.get(slot)
            if node is None:
                node = owners[slot] = nodes.get_node_from_slot(slot)
            routes.setdefault(node.name, (node, []))[1].append(i)
        held: list[tuple[Any, Any, list[int]]] = []
        replies: list[Any] = [None] * len(self._commands)
        try:
            for node, positions in routes.values():
                pool = cluster.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                held.append((pool, conn, positions))
                packed = b"".join([self._commands[i][1] for i in positions])
                conn.send_packed_command([packed], check_health=False)
            error: Exception | None = None
            for _pool, conn, positions in held:
                for i in positions:  # read every reply, so the connection stays in step
                    try:
                        replies[i] = conn.read_response()
                    except redis.ResponseError as exc:
                        error = error or exc
            if error is not None:
                raise error
        except BaseException:
            for _pool, conn, _positions in held:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _positions in held:
                pool.release(conn)
        return replies


def _encode(args: Sequence[Any]) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def _as_dict(reply: Any) -> dict:
    """HGETALL's reply as a dict (a flat list of field, value on RESP2)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


class Lane:
    """One master's connection while a generation is written to a cluster: packed commands
    queued, sent a chunk at a time, with one chunk's replies left in flight."""

    def __init__(self, node_client: Any) -> None:
        self.pool = node_client.connection_pool
        self.conn = self.pool.get_connection()
        self.commands: list[bytes] = []
        self.pending: deque[int] = deque()  # replies per chunk sent, unread

    def send(self) -> int:
        """Send the queued commands, then read the replies of the chunk before (one stays in
        flight); returns the new keys among the replies read."""
        self.conn.send_packed_command([b"".join(self.commands)], check_health=False)
        self.pending.append(len(self.commands))
        self.commands = []
        added = 0
        while len(self.pending) > 1:
            added += self._read()
        return added

    def drain(self) -> int:
        added = 0
        while self.pending:
            added += self._read()
        return added

    def _read(self) -> int:
        new = 0
        for _ in range(self.pending.popleft()):
            if self.conn.read_response() is None:  # an error reply raises
                new += 1
        return new

    def release(self) -> None:
        self.pool.release(self.conn)


def unlink_on(pool: Any, pattern: str, per_key: bool) -> None:
    """UNLINK every key matching ``pattern`` on one server, SCAN by SCAN (one round trip per
    SCAN: the UNLINKs of a batch travel with the next SCAN); ``per_key``: one UNLINK per key
    (on a cluster master, whose keys are in different slots)."""

    def unlinks(keys: list[bytes]) -> list[bytes]:
        if not keys:
            return []
        if per_key:
            return [resp_command([b"UNLINK", k]) for k in keys]
        return [resp_command([b"UNLINK", *keys])]

    conn = pool.get_connection()
    try:
        cursor, keys = b"0", []
        while True:
            scan = [b"SCAN", cursor, b"MATCH", pattern.encode(), b"COUNT", b"20000"]
            sent = unlinks(keys)
            conn.send_packed_command([b"".join([*sent, resp_command(scan)])], check_health=False)
            for _ in sent:
                conn.read_response()
            cursor, keys = conn.read_response()
            if cursor in (b"0", 0):
                break
        sent = unlinks(keys)
        if sent:
            conn.send_packed_command([b"".join(sent)], check_health=False)
            for _ in sent:
                conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
