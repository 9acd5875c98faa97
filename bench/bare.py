"""The limit of the stack: a bare Flask endpoint that checks Twilio's signature.

``POST /twilio/sms`` validates ``X-Twilio-Signature`` with twilio's
``RequestValidator`` over exactly the URL the app itself validates (``PUBLIC_BASE_URL``
+ path + the query string as it arrived, see ``bot.webhooks.signed_url``) and answers
a fixed ``MessagingResponse`` as text/xml; a wrong signature gets 403 as in the app.
No database, no templates, no sessions. ``GET /healthz`` lets the bench know it is up.

Served exactly like the app: ``gunicorn bench.bare:app --bind 127.0.0.1:PORT`` from the
project root with the same ``WEB_CONCURRENCY`` (see ``bench/run.py``). Settings:
``TWILIO_AUTH_TOKEN`` and ``PUBLIC_BASE_URL`` from the environment.
"""

import os

from flask import Flask, Response, abort, request
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse

TOKEN = os.environ.get("TWILIO_AUTH_TOKEN", "")
BASE = (os.environ.get("PUBLIC_BASE_URL") or "").rstrip("/")
_response = MessagingResponse()
_response.message("Thanks, we got your message.")
ANSWER = str(_response)  # built once: the endpoint's answer is fixed

app = Flask(__name__)


def check_signature() -> None:
    """403 unless Twilio signed this request (``bench.floor`` checks the same way)."""
    base = BASE or request.root_url.rstrip("/")
    query = request.query_string.decode("latin-1")
    url = base + request.path + ("?" + query if query else "")
    algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    signature = request.headers.get("X-Twilio-Signature", "")
    if not TOKEN or not RequestValidator(TOKEN).validate(url, request.form, signature, algorithm):
        abort(403)


@app.post("/twilio/sms")
def sms():
    check_signature()
    return Response(ANSWER, mimetype="text/xml")


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
