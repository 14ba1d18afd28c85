"""What the Redis online store does differently on a Redis Cluster: reads batched per master,
a generation's rows written per master (with its marker keys, which tell a master that
restarted empty), keys unlinked on every master; all of them following a resharding's MOVED
and ASK redirects.

See the ``redis_online`` module docstring (section *Redis Cluster*) for the key layout. These
helpers talk to each master over its own connection with pre-packed commands: redis-py's
cluster pipeline resolves a routing policy per command, which costs more than Redis itself
once a request reads a hundred keys (one MGET per slot).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from contextkit.stores._redis_keyspace import resp_bulk, resp_command, slot_of

REDIRECTS = 5  # MOVED/ASK/TRYAGAIN answers followed per command before its error is raised


class ClusterBatch:
    """A read pipeline over a cluster: commands queued with the slot of their first key, then
    sent to every master they route to at once (all masters written before any is read), and
    the replies read back in order. One round trip per master, in parallel; each master gets
    its commands in queue order on one connection.

    During a resharding a command may be answered MOVED (its slot has a new owner: the slot
    map is patched and it goes there), ASK (its slot is migrating and its keys already left:
    it goes to the target behind ``ASKING``), as redis-py's cluster client does, or TRYAGAIN
    (an MGET whose keys are split between the two nodes until the slot's migration ends: it
    goes again as one GET per key, each answered or redirected on its own); only those
    commands go out again, in one more round trip. A master that could not be reached
    refreshes the slot map and the whole batch runs once more (reads only, so running them
    twice is harmless); the second failure is raised."""

    def __init__(self, cluster: Any) -> None:
        self._cluster = cluster
        self._commands: list[tuple[int, bytes]] = []  # (slot, the packed command)
        self._finish: dict[int, Callable[[Any], Any]] = {}
        self._mget_keys: dict[int, Sequence[str]] = {}  # an MGET's keys, to split it

    def __len__(self) -> int:
        return len(self._commands)

    def execute_command(self, *args: Any) -> None:
        self._commands.append((slot_of(args[1]), resp_command(_encode(args))))

    def mget(self, slot: int, keys: Sequence[str]) -> None:
        """MGET of ``keys``, all in ``slot`` (packed here: the hot path of a request)."""
        packed = b"".join(resp_bulk(k.encode()) for k in keys)
        self._mget_keys[len(self._commands)] = keys
        self._commands.append((slot, b"*%d\r\n$4\r\nMGET\r\n%b" % (len(keys) + 1, packed)))

    def hget(self, name: str, key: str) -> None:
        self.execute_command("HGET", name, key)

    def hgetall(self, name: str) -> None:
        self._finish[len(self._commands)] = _as_dict
        self.execute_command("HGETALL", name)

    def exists(self, key: str) -> None:
        self.execute_command("EXISTS", key)

    def execute(self) -> list[Any]:
        import redis

        try:
            replies = self._run()
        except (redis.ConnectionError, redis.TimeoutError):
            self._refresh()
            replies = self._run()
        for i, finish in self._finish.items():
            replies[i] = finish(replies[i])
        return replies

    def _refresh(self) -> None:
        """Read the slot map again (after a failover), best effort: when no master answers,
        the batch's second try raises the error that says so."""
        import redis
        from redis.exceptions import RedisClusterException

        with suppress(redis.RedisError, RedisClusterException):
            self._cluster.nodes_manager.initialize()

    def _run(self) -> list[Any]:
        """Every command's reply, following redirects (see the class docstring)."""
        import time

        from redis.exceptions import AskError

        nodes = self._cluster.nodes_manager
        owners: dict[int, Any] = {}
        todo: list[tuple[int, Any, bool]] = []  # (command, node, behind ASKING)
        for i, (slot, _packed) in enumerate(self._commands):
            node = owners.get(slot)
            if node is None:
                node = owners[slot] = nodes.get_node_from_slot(slot)
            todo.append((i, node, False))
        queued = len(self._commands)
        replies: list[Any] = [None] * queued
        split: dict[int, range] = {}  # an MGET answered TRYAGAIN -> its GETs
        try:
            for _ in range(REDIRECTS):
                redirected = self._send(todo, replies)
                if not redirected:
                    break
                todo, wait = [], False
                for i, node, asking, error in redirected:
                    if isinstance(error, AskError):
                        todo.append((i, *redirect(self._cluster, node, error)))
                    elif i in self._mget_keys:
                        split[i] = self._split(i)
                        replies += [None] * len(split[i])
                        todo += [(j, node, asking) for j in split[i]]
                    else:  # TRYAGAIN of another command: the migration moves on meanwhile
                        todo.append((i, node, asking))
                        wait = True
                if wait:
                    time.sleep(0.05)
            else:
                raise redirected[0][3]
        finally:
            del self._commands[queued:]
        for i, parts in split.items():
            replies[i] = [replies[j] for j in parts]
        return replies[:queued]

    def _split(self, i: int) -> range:
        """Queue one GET per key of the MGET at ``i``; returns their positions."""
        slot, start = self._commands[i][0], len(self._commands)
        for key in self._mget_keys[i]:
            self._commands.append((slot, resp_command([b"GET", key.encode()])))
        return range(start, len(self._commands))

    def _send(
        self, todo: list[tuple[int, Any, bool]], replies: list[Any]
    ) -> list[tuple[int, Any, bool, Exception]]:
        """Send ``todo`` (one packed write per master, all before any read), put the replies
        in ``replies``; returns the commands answered MOVED, ASK or TRYAGAIN, with the error.
        Any other error reply is raised once every reply is read."""
        import redis
        from redis.exceptions import AskError, TryAgainError

        cluster = self._cluster
        commands = self._commands
        routes: dict[str, tuple[Any, list[tuple[int, Any, bool]]]] = {}
        for entry in todo:
            node = entry[1]
            route = routes.get(node.name)
            if route is None:
                route = routes[node.name] = (node, [])
            route[1].append(entry)
        held: list[tuple[Any, Any, list[tuple[int, Any, bool]]]] = []
        redirected: list[tuple[int, Any, bool, Exception]] = []
        try:
            for node, entries in routes.values():
                pool = cluster.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                held.append((pool, conn, entries))
                packed = [_ASKING + commands[i][1] if asking else commands[i][1]
                          for i, _node, asking in entries]  # fmt: skip
                conn.send_packed_command([b"".join(packed)], check_health=False)
            error: Exception | None = None
            for _pool, conn, entries in held:
                for i, node, asking in entries:  # read every reply: the connection stays in step
                    try:
                        if asking:
                            conn.read_response()
                        replies[i] = conn.read_response()
                    except (AskError, TryAgainError) as exc:  # MovedError is an AskError
                        redirected.append((i, node, asking, exc))
                    except redis.ResponseError as exc:
                        error = error or exc
            if error is not None:
                raise error
        except BaseException:
            for _pool, conn, _entries in held:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _entries in held:
                pool.release(conn)
        return redirected


_ASKING = resp_command([b"ASKING"])


def redirect(cluster: Any, origin: Any, error: Any) -> tuple[Any, bool]:
    """Where a command answered ``error`` (MOVED or ASK) by the master ``origin`` goes next,
    and whether behind ``ASKING``. MOVED: the slot has a new owner; the client's slot map is
    patched (every later command of that slot goes there). ASK: the slot is migrating and the
    key is on the target already (or new); only this command goes there."""
    from redis.exceptions import MovedError

    nodes = cluster.nodes_manager
    if not error.host:  # a node without a known endpoint redirects with only a port
        error.host = origin.host
    if isinstance(error, MovedError):
        nodes.move_slot(error)
        return nodes.get_node_from_slot(error.slot_id), False
    host, port = nodes.remap_host_port(error.host, error.port)
    node = nodes.get_node(host=host, port=port)
    if node is None:  # a master this client has not seen yet (a node added for a resharding)
        nodes.initialize()
        node = nodes.get_node(host=host, port=port)
        if node is None:
            raise error
    return node, True


def _encode(args: Sequence[Any]) -> list[bytes]:
    return [a if isinstance(a, bytes) else str(a).encode() for a in args]


def _as_dict(reply: Any) -> dict:
    """HGETALL's reply as a dict (a flat list of field, value on RESP2)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


class Lane:
    """One master's connection while a generation is written to a cluster: packed commands
    queued, sent a chunk at a time, with one chunk's replies left in flight. A command is
    ``(slot, packed, behind ASKING, redirects so far)``; a reply of nil is a new key."""

    def __init__(self, node: Any, node_client: Any) -> None:
        self.node = node
        self.pool = node_client.connection_pool
        self.conn = self.pool.get_connection()
        self.commands: list[tuple[int, bytes, bool, int]] = []
        self.pending: deque[list[tuple[int, bytes, bool, int]]] = deque()  # sent, unread

    def send(self) -> tuple[int, list]:
        """Send the queued commands, then read the replies of the chunk before (one stays in
        flight); returns the new keys among the replies read and the commands redirected
        (see :meth:`read`)."""
        packed = [_ASKING + command if asking else command
                  for _slot, command, asking, _hops in self.commands]  # fmt: skip
        self.conn.send_packed_command([b"".join(packed)], check_health=False)
        self.pending.append(self.commands)
        self.commands = []
        added, redirected = 0, []
        while len(self.pending) > 1:
            n, moved = self._read()
            added, redirected = added + n, redirected + moved
        return added, redirected

    def drain(self) -> tuple[int, list]:
        added, redirected = 0, []
        while self.pending:
            n, moved = self._read()
            added, redirected = added + n, redirected + moved
        return added, redirected

    def _read(self) -> tuple[int, list]:
        """The oldest chunk's replies: its new keys, and its commands answered MOVED or ASK
        with the error (any other error reply raises)."""
        from redis.exceptions import AskError

        new, redirected = 0, []
        for command in self.pending.popleft():
            try:
                if command[2]:
                    self.conn.read_response()  # ASKING's OK
                if self.conn.read_response() is None:
                    new += 1
            except AskError as exc:  # MovedError is an AskError
                redirected.append((command, exc))
        return new, redirected

    def release(self) -> None:
        self.pool.release(self.conn)


class SpreadWriter:
    """The commands that write one generation over a cluster's masters: each goes to its
    slot's master through that master's :class:`Lane`, a chunk at a time. A command answered
    MOVED or ASK (a resharding moves its slot) goes again where :func:`redirect` says, so a
    write during a slot migration completes; any other error reply fails the write."""

    def __init__(self, cluster: Any, chunk: int) -> None:
        self._cluster = cluster
        self._chunk = chunk
        self._owners: dict[int, Any] = {}  # slot -> master, as the client's map said
        self.lanes: dict[str, Lane] = {}
        self.added = 0  # keys new to the generation (a reply of nil)

    def add(self, slot: int, command: bytes) -> None:
        node = self._owners.get(slot)
        if node is None:
            node = self._owners[slot] = self._cluster.nodes_manager.get_node_from_slot(slot)
        self._queue(node, (slot, command, False, 0))

    def mark(self, aux: str) -> None:
        """Queue the generation's marker keys (see :func:`lost_generations`): written with its
        rows, deleted with them."""
        for key in mark_keys(aux):
            self.add(slot_of(key), resp_command([b"SET", key.encode(), b"1"]))

    def finish(self) -> int:
        """Send what is queued and read every reply (redirected commands included); returns
        the keys new to the generation."""
        while any(lane.commands or lane.pending for lane in self.lanes.values()):
            for lane in list(self.lanes.values()):
                if lane.commands:
                    self._settle(lane, *lane.send())
            for lane in list(self.lanes.values()):
                self._settle(lane, *lane.drain())
        return self.added

    def close(self, failed: bool) -> None:
        """Give the connections back (closed after a failure: replies may be left unread)."""
        for lane in self.lanes.values():
            if failed:
                lane.conn.disconnect()
            lane.release()

    def _queue(self, node: Any, command: tuple[int, bytes, bool, int]) -> None:
        lane = self.lanes.get(node.name)
        if lane is None:
            lane = self.lanes[node.name] = Lane(node, self._cluster.get_redis_connection(node))
        lane.commands.append(command)
        if len(lane.commands) >= self._chunk:
            self._settle(lane, *lane.send())

    def _settle(self, lane: Lane, added: int, redirected: list) -> None:
        self.added += added
        for (slot, packed, _asking, hops), error in redirected:
            if hops + 1 >= REDIRECTS:
                raise error
            node, asking = redirect(self._cluster, lane.node, error)
            if not asking:
                self._owners[slot] = node
            self._queue(node, (slot, packed, asking, hops + 1))


# -- generation markers: which generation lost the keys of a master ------------------------------

MARKS = 128  # marker keys per generation: one in each 128 consecutive slots


@functools.cache
def mark_tags() -> tuple[str, ...]:
    """The hash tags of a generation's marker keys: the first numbers whose slots fall one in
    each 1/MARKS of the slots, so that every master serving 128 consecutive slots (or more)
    holds markers. Fixed forever: whoever checks must name the keys the writer wrote."""
    width = 16384 // MARKS
    found: dict[int, str] = {}
    i = 0
    while len(found) < MARKS:
        found.setdefault(slot_of(str(i)) // width, str(i))
        i += 1
    return tuple(found[b] for b in range(MARKS))


def mark_keys(aux: str) -> list[str]:
    """The marker keys of a generation whose other keys start with ``aux`` (``P:d:TABLE:GEN;``:
    deleted with the generation)."""
    return [f"{aux}live{{{tag}}}" for tag in mark_tags()]


def lost_generations(cluster: Any, auxes: Sequence[str]) -> list[bool]:
    """Per generation (named by its ``aux`` prefix): whether a master lost keys of it since it
    was written (restarted empty), that is some of its markers are there and some are not. One
    round trip to each master. None there: a generation written before markers existed (a
    master that lost everything took the table's meta too, which :meth:`has_table` sees)."""
    batch = ClusterBatch(cluster)
    for aux in auxes:
        for key in mark_keys(aux):
            batch.exists(key)
    replies = batch.execute()
    return [0 < sum(replies[n * MARKS : (n + 1) * MARKS]) < MARKS for n in range(len(auxes))]


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
    importing: list[bytes] = []  # keys this master holds in a slot it imports (resharding)
    try:
        cursor, keys = b"0", []
        while True:
            scan = [b"SCAN", cursor, b"MATCH", pattern.encode(), b"COUNT", b"20000"]
            sent = unlinks(keys)
            conn.send_packed_command([b"".join([*sent, resp_command(scan)])], check_health=False)
            importing += _read_unlinks(conn, keys, len(sent), per_key)
            cursor, keys = conn.read_response()
            if cursor in (b"0", 0):
                break
        sent = unlinks(keys)
        if sent:
            conn.send_packed_command([b"".join(sent)], check_health=False)
            importing += _read_unlinks(conn, keys, len(sent), per_key)
        if importing:  # only ASKING lets an importing master act on the slot's keys
            asked = [_ASKING + resp_command([b"UNLINK", k]) for k in importing]
            conn.send_packed_command([b"".join(asked)], check_health=False)
            for _ in range(2 * len(asked)):
                conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _read_unlinks(conn: Any, keys: list[bytes], count: int, per_key: bool) -> list[bytes]:
    """Read the replies of ``count`` UNLINKs (of ``keys``, one each when ``per_key``); returns
    the keys answered MOVED by a cluster master that imports their slot (a resharding moves
    it here: SCAN lists its keys, but the master acts on them only behind ASKING). A key
    answered ASK left for the migration's target after the SCAN: the target's SCAN finds it
    (unless that master was scanned before: then it stays, never served, until the table is
    dropped)."""
    from redis.exceptions import AskError, MovedError

    importing = []
    for i in range(count):
        try:
            conn.read_response()
        except MovedError:
            if not per_key:
                raise
            importing.append(keys[i])
        except AskError:
            if not per_key:
                raise
    return importing
