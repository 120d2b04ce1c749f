"""One driver per output folder: a lease file created exclusively, kept alive by a heartbeat.

``OUT/_rscert_lease.json`` holds the driver's host, pid, a random token and the time of its last
heartbeat. A driver creates it exclusively (:func:`rscert.store.storage.create_exclusive`) before it
reads the manifest, refreshes it every ``HEARTBEAT_S`` seconds from a background thread, and removes
it when the job ends. A second driver finding a live lease is refused with the holder's host and pid.

A lease is stale, and can be taken over, when

* its heartbeat is older than ``STALE_AFTER_S`` (90 s: several missed heartbeats, so a slow
  store or a busy driver does not lose its lease, while a resubmitted job waits at most that long), or
* its holder ran on this host and its pid no longer exists (a killed local driver, or a Ray job
  resubmitted on the same head node after its driver was killed: no wait at all).

Takeover is itself exclusive: the new driver creates ``_rscert_lease.<stale token>.takeover`` first,
so of two drivers that find the same stale lease only one proceeds.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from rscert.store.results import OutputError, Store

LEASE = "_rscert_lease.json"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 90.0


def _stale(lease: dict, now: float) -> bool:
    if now - float(lease.get("heartbeat", 0)) > STALE_AFTER_S:
        return True
    return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1)))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class Lease:
    """A held lease; :meth:`release` (or the end of the process) gives it back."""

    store: Store
    token: str
    log: Callable[[str], None] = print
    lost: bool = False
    takeover: str | None = None  # the marker created when this lease replaced a stale one
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def payload(self) -> dict:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "heartbeat": now,
                "heartbeat_utc": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
                "stale_after_s": STALE_AFTER_S}

    @classmethod
    def acquire(cls, store: Store, log: Callable[[str], None] = print) -> Lease:
        """Take the folder's lease, or raise :class:`OutputError` naming the driver that holds it."""
        lease = cls(store, uuid.uuid4().hex, log)
        for _ in range(5):
            if store.create_json(LEASE, lease.payload()):
                break
            held = store.read_json(LEASE)
            if held is None:
                continue  # released in between: try again
            if not _stale(held, time.time()):
                age = time.time() - float(held.get("heartbeat", 0))
                raise OutputError(
                    f"out: {store.url!r} is in use by another driver (host {held.get('host')}, pid "
                    f"{held.get('pid')}, last heartbeat {age:.0f} s ago); refusing to run a second one on it. "
                    f"Wait for it to finish; if it was killed, its lease expires {STALE_AFTER_S:.0f} s after "
                    f"its last heartbeat (at once on the same host), or remove {LEASE} if you are sure.")
            marker = f"_rscert_lease.{held.get('token', 'none')}.takeover"
            if not store.create_json(marker, lease.payload()):
                raise OutputError(f"out: {store.url!r}: another driver is taking over the stale lease of "
                                  f"host {held.get('host')} pid {held.get('pid')} right now; refusing to run beside it")
            lease.takeover = marker
            store.write_json(LEASE, lease.payload())
            log(f"out: took over the stale lease of host {held.get('host')} pid {held.get('pid')}")
            break
        else:
            raise OutputError(f"out: {store.url!r}: could not take the driver lease ({LEASE} keeps changing)")
        lease._thread = threading.Thread(target=lease._beat, name="rscert-lease", daemon=True)
        lease._thread.start()
        return lease

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self.store.read_json(LEASE)
                if held is None or held.get("token") != self.token:
                    self.lost = True
                    self.log(f"warning: the lease on {self.store.url!r} was taken by another driver "
                             f"({None if held is None else held.get('host')}); this driver's heartbeat stopped")
                    return
                self.store.write_json(LEASE, self.payload())
            except OSError as exc:  # a missed heartbeat; the next one may get through
                self.log(f"warning: lease heartbeat failed ({exc})")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease (if it is still this driver's)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self.store.read_json(LEASE)
            if held is not None and held.get("token") == self.token:
                self.store.remove(LEASE)
            if self.takeover:
                self.store.remove(self.takeover)
        except OSError as exc:
            self.log(f"warning: could not remove the lease {LEASE} ({exc}); it expires by itself")
