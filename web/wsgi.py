"""The WSGI entry point gunicorn loads: `web.wsgi:app`, configured from the environment.

Building the app does not contact etcd; each worker connects on its first request.
"""
from web import create_app

app = create_app()
