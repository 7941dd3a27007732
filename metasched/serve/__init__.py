"""``metasched serve``: one process that collects periodically and answers ranking over HTTP.

Only ``serve.app`` and ``serve.server`` import FastAPI/uvicorn.
"""
