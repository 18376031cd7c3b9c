"""Background jobs: long computations (a dataset map and its atlas, model-running explanations)
run in daemon threads; ``GET /api/jobs/{job}`` polls them. A failed job keeps its error's
message and machine code (``error``, ``code``), as a failed request would."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from ..errors import NotFound, VfsError

__all__ = ["Job", "Jobs"]

log = logging.getLogger("vfsearch.server")
MAX_JOBS = 256


class Job:
    def __init__(self, kind: str, key):
        self.id = uuid.uuid4().hex[:12]
        self.kind, self.key = kind, key
        self.status = "running"
        self.progress = 0.0
        self.error: str | None = None
        self.code: str | None = None
        self.param: str | None = None
        self.result = None
        self.started = time.time()
        self.finished: float | None = None

    def fail(self, exc: BaseException) -> None:
        self.status = "error"
        if isinstance(exc, VfsError):
            self.error, self.code, self.param = exc.message, exc.code, exc.param
        else:  # a fault of the server, not of the request
            self.error, self.code = f"{type(exc).__name__}: {exc}", "internal"

    def set_progress(self, f: float) -> None:
        self.progress = float(min(1.0, max(0.0, f)))

    def to_json(self, with_result: bool = True) -> dict:
        d = {"job": self.id, "kind": self.kind, "status": self.status,
             "progress": round(float(self.progress), 4),
             "seconds": round((self.finished or time.time()) - self.started, 2)}
        if self.error:
            d["error"] = self.error
            d["code"] = self.code
            if self.param:
                d["param"] = self.param
        if with_result and self.status == "done" and self.result is not None:
            d["result"] = self.result
        return d


class Jobs:
    """The jobs of one app, memoised by key: a running or finished job is not started twice."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.by_key: dict = {}
        self.lock = threading.Lock()

    def get(self, key) -> Job | None:
        return self.by_key.get(key)

    def forget(self, key, status: str = "done") -> None:
        """Drop the memo of ``key`` if its job has ``status`` (e.g. to recompute a map)."""
        with self.lock:
            old = self.by_key.get(key)
            if old is not None and old.status == status:
                del self.by_key[key]

    def start(self, kind: str, key, fn: Callable[[Job], object]) -> Job:
        """Run ``fn(job)`` in a daemon thread unless a job with ``key`` is running or done."""
        with self.lock:
            old = self.by_key.get(key)
            if old is not None and old.status in ("running", "done"):
                return old
            job = Job(kind, key)
            self.jobs[job.id] = job
            self.by_key[key] = job
            if len(self.jobs) > MAX_JOBS:  # forget the oldest finished jobs
                for jid in [j.id for j in self.jobs.values() if j.status != "running"][:64]:
                    jj = self.jobs.pop(jid)
                    if self.by_key.get(jj.key) is jj:
                        del self.by_key[jj.key]

        def run():
            try:
                job.result = fn(job)
                job.progress = 1.0
                job.status = "done"
            except Exception as e:  # noqa: BLE001 - the job reports it; nobody else would
                job.fail(e)
                if not isinstance(e, VfsError):
                    log.error("background %s job failed", kind, exc_info=e)
            finally:
                job.finished = time.time()

        threading.Thread(target=run, name=f"vfsearch-{kind}", daemon=True).start()
        return job

    def json(self, jid: str) -> dict:
        j = self.jobs.get(jid)
        if j is None:
            raise NotFound(f"no job {jid!r} (jobs are kept in memory only)", param="job")
        return j.to_json()
