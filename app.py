"""Entry point for the ``flask --app app`` command line."""

from bot import create_app

app = create_app()
