"""A node of several processes: a front on the public port and one worker per core.

Each worker is the ordinary single-process server (``mediaserver.signaling.app``) on a Unix
socket of its own, hosting whole rooms with its own UDP media sockets. The front
(``mediaserver.signaling.front``) proxies each signalling WebSocket to the worker that owns
its room (``mediaserver.workers.placement``), fans the admin API and ``/metrics`` out, and
this package starts, watches and restarts the worker processes. docs/workers.md has the
design, what goes where, and what happens when a worker dies.

``placement``: which worker hosts each room (pure). ``spec``: how many workers, what each is
told, restart backoff (pure). ``exposition``: merging the workers' Prometheus text (pure).
``supervisor``: the processes. ``child``: a worker's entry point.

Nothing here imports aiortc or the rooms: the front stays a small process.
"""
