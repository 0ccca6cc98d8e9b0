"""Where a removed job stood in the list, so a page cursor that names it still pages on.

OpenAI-style lists page with `after=<the last id of the previous page>`. The common way to clear a server,

    for video in client.videos.list():
        client.videos.delete(video.id)

deletes each page's last video before the client asks for the next page after it; without a record of that
video's place the next page was a 404 and the loop stopped halfway. Each deleted or expired job's sort key
(created_at, id) and client are kept here (a bounded number, the oldest forgotten first), and only its own
client's cursor finds it, so ids of other clients still answer as unknown.
"""

from __future__ import annotations

import collections
import threading

MAX_REMEMBERED = 10_000

SortKey = tuple[float, str]


class GoneCursors:
    def __init__(self, limit: int = MAX_REMEMBERED):
        self._limit = limit
        self._lock = threading.Lock()
        self._gone: collections.OrderedDict[str, tuple[str, SortKey]] = collections.OrderedDict()

    def remember(self, job_id: str, client: str, created_at: float) -> None:
        with self._lock:
            self._gone[job_id] = (client, (created_at, job_id))
            while len(self._gone) > self._limit:
                self._gone.popitem(last=False)

    def sort_key(self, job_id: str, client: str | None) -> SortKey | None:
        """The list position of the removed job `job_id`, if `client` (None: any) owned it."""
        with self._lock:
            found = self._gone.get(job_id)
        if found is None or (client is not None and found[0] != client):
            return None
        return found[1]
