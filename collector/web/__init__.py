"""The collector's web boundary: the operator API and the console (issue 18).

Only this package imports the web framework (FastAPI on Starlette) and the template
engine (Jinja2); uvicorn is imported by :mod:`derrick.plumbing.asgi` alone. Who may do
what is decided by :mod:`collector.users` (no web code); this package turns requests into
identities (:mod:`collector.web.security`), JSON answers (:mod:`collector.web.api`) and
pages (:mod:`collector.web.console`).
"""
