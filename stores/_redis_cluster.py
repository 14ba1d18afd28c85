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
        routes: dict[str, tuple[Any, list[int]]] = {}  # master -> (node, its commands)
        for i, (slot, _packed) in enumerate(self._commands):
            node = owners.get(slot)
            if node is None:
                node = owners[slot] = nodes.get_node_from_slot(slot)
            route = routes.get(node.name)
            if route is None:
                route = routes[node.name] = (node, [])
            route[1].append(i)
        asking: set[int] = set()  # the commands to send behind ASKING
        queued = len(self._commands)
        replies: list[Any] = [None] * queued
        split: dict[int, range] = {}  # an MGET answered TRYAGAIN -> its GETs
        try:
            for _ in range(REDIRECTS):
                redirected = self._send(routes, asking, replies)
                if not redirected:
                    break
                routes, asking, wait = {}, set(), False
                for i, node, asked, error in redirected:
                    targets = [i]
                    if isinstance(error, AskError):
                        node, asked = redirect(self._cluster, node, error)
                    elif _arguments(self._commands[i][1])[0] == b"MGET":
                        split[i] = self._split(i)
                        replies += [None] * len(split[i])
                        targets = list(split[i])
                    else:  # TRYAGAIN of another command: the migration moves on meanwhile
                        wait = True
                    routes.setdefault(node.name, (node, []))[1].extend(targets)
                    if asked:
                        asking.update(targets)
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
        slot, packed = self._commands[i]
        start = len(self._commands)
        for key in _arguments(packed)[1:]:
            self._commands.append((slot, resp_command([b"GET", key])))
        return range(start, len(self._commands))

    def _send(
        self, routes: dict[str, tuple[Any, list[int]]], asking: set[int], replies: list[Any]
    ) -> list[tuple[int, Any, bool, Exception]]:
        """Send each master its commands (one packed write each, all before any read; those
        in ``asking`` behind ASKING), put the replies in ``replies``; returns the commands
        answered MOVED, ASK or TRYAGAIN: (position, master, behind ASKING, the error). Any
        other error reply is raised once every reply is read."""
        import redis
        from redis.exceptions import AskError, TryAgainError

        cluster = self._cluster
        commands = self._commands
        held: list[tuple[Any, Any, Any, list[int]]] = []
        redirected: list[tuple[int, Any, bool, Exception]] = []
        try:
            for node, positions in routes.values():
                pool = cluster.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                held.append((pool, conn, node, positions))
                if asking:
                    packed = [_ASKING + commands[i][1] if i in asking else commands[i][1]
                              for i in positions]  # fmt: skip
                else:
                    packed = [commands[i][1] for i in positions]
                conn.send_packed_command([b"".join(packed)], check_health=False)
            error: Exception | None = None
            for _pool, conn, node, positions in held:
                for i in positions:  # read every reply: the connection stays in step
                    try:
                        if asking and i in asking:
                            conn.read_response()
                        replies[i] = conn.read_response()
                    except (AskError, TryAgainError) as exc:  # MovedError is an AskError
                        redirected.append((i, node, i in asking, exc))
                    except redis.ResponseError as exc:
                        error = error or exc
            if error is not None:
                raise error
        except BaseException:
            for _pool, conn, _node, _positions in held:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _node, _positions in held:
                pool.release(conn)
        return redirected


_ASKING = resp_command([b"ASKING"])


def _arguments(packed: bytes) -> list[bytes]:
    """The arguments of one packed command (a RESP array of bulk strings)."""
    head, _, rest = packed.partition(b"\r\n")
    args, at = [], 0
    for _ in range(int(head[1:])):
        end = rest.index(b"\r\n", at)
        size = int(rest[at + 1 : end])
        args.append(rest[end + 2 : end + 2 + size])
        at = end + 4 + size
    return args


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
    queued, sent a chunk at a time, with one chunk's replies left in flight. A reply of nil is
    a new key; the commands at the positions in ``asking`` are sent behind ``ASKING``."""

    def __init__(self, node: Any, node_client: Any) -> None:
        self.node = node
        self.pool = node_client.connection_pool
        self.conn = self.pool.get_connection()
        self.commands: list[bytes] = []
        self.asking: set[int] = set()
        self.pending: deque[tuple[list[bytes], set[int]]] = deque()  # sent, unread

    def send(self) -> tuple[int, list]:
        """Send the queued commands, then read the replies of the chunk before (one stays in
        flight); returns the new keys among the replies read and the commands redirected
        (see :meth:`_read`)."""
        commands = self.commands
        if self.asking:
            commands = [_ASKING + c if i in self.asking else c for i, c in enumerate(commands)]
        self.conn.send_packed_command([b"".join(commands)], check_health=False)
        self.pending.append((self.commands, self.asking))
        self.commands, self.asking = [], set()
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

        commands, asking = self.pending.popleft()
        read = self.conn.read_response
        new, redirected = 0, []
        for i in range(len(commands)):
            try:
                if asking and i in asking:
                    read()  # ASKING's OK
                if read() is None:
                    new += 1
            except AskError as exc:  # MovedError is an AskError
                redirected.append((commands[i], exc))
        return new, redirected

    def release(self) -> None:
        self.pool.release(self.conn)


class SpreadWriter:
    """The commands that write one generation over a cluster's masters: each goes to its
    slot's master through that master's :class:`Lane`, a chunk at a time. A command answered
    MOVED or ASK (a resharding moves its slot) goes again where :func:`redirect` says, so a
    write during a slot migration completes; any other error reply fails the write. Each
    command must write one key (whose slot the redirect names), and a key once."""

    def __init__(self, cluster: Any, chunk: int) -> None:
        self._cluster = cluster
        self._chunk = chunk
        self._lane_of: dict[int, Lane] = {}  # slot -> its master's lane, as the map said
        self._hops: dict[bytes, int] = {}  # a redirected command -> its redirects so far
        self.lanes: dict[str, Lane] = {}
        self.added = 0  # keys new to the generation (a reply of nil)

    def add(self, slot: int, command: bytes) -> None:
        lane = self._lane_of.get(slot)
        if lane is None:
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
            lane = self._lane_of[slot] = self._lane(node)
        lane.commands.append(command)
        if len(lane.commands) >= self._chunk:
            self._settle(lane, *lane.send())

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

    def _lane(self, node: Any) -> Lane:
        lane = self.lanes.get(node.name)
        if lane is None:
            lane = self.lanes[node.name] = Lane(node, self._cluster.get_redis_connection(node))
        return lane

    def _settle(self, lane: Lane, added: int, redirected: list) -> None:
        self.added += added
        for command, error in redirected:
            hops = self._hops.get(command, 0) + 1
            if hops >= REDIRECTS:
                raise error
            self._hops[command] = hops
            node, asking = redirect(self._cluster, lane.node, error)
            target = self._lane(node)
            if asking:
                target.asking.add(len(target.commands))
            else:
                self._lane_of[error.slot_id] = target
            target.commands.append(command)
            if len(target.commands) >= self._chunk:
                self._settle(target, *target.send())


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
