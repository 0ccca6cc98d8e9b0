"""`magi1 serve`: a web page and an HTTP API that queue t2v / i2v / v2v jobs for one model.

    from magi1.server.app import create_app
    from magi1.server.settings import ServerSettings

    app = create_app(lambda: MagiPipeline.from_pretrained("demo"), ServerSettings(results_dir="results"))

Modules: settings (limits), job_request (parsing a submission), uploads (checking uploaded files),
jobs (the store, queue and worker), middleware (body cap, same-origin writes, headers), app (the routes).
FastAPI is imported only by `app`, so the rest can be used without the `serve` extra.
"""

from .settings import ServerSettings

__all__ = ["ServerSettings"]
