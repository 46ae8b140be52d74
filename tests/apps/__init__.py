"""Small apps that tests serve under a real gunicorn (``tests.apps.NAME:create_app()``)."""
