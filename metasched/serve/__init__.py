"""``metasched serve``: one process that collects periodically and answers ranking over HTTP.

Kept import-light: ``metasched disable``/``enable`` use ``serve.admin`` and must not pay for the web
framework. Only ``serve.app`` and ``serve.server`` import FastAPI/uvicorn.
"""
