"""Print what to do next after `make run` has migrated the database."""

import sys

PORT = sys.argv[1] if len(sys.argv) > 1 else "5000"

print(
    f"""
ConsentLine is starting on http://127.0.0.1:{PORT}  (SQLite: instance/consentline.sqlite3)

Next steps (in another terminal, from this folder):
  0. Create your portal sign-in, then open http://127.0.0.1:{PORT} and try the Simulator:
       .venv/bin/flask --app app admins create you@example.com
  1. Give an employee a line (or use the portal's Employees page):
       .venv/bin/flask --app app employees add --name Alice --cell +14155550111 --line +14155550100
  2. Check the policy and texts:
       .venv/bin/flask --app app settings show
  3. Let Twilio reach this machine (for example with a tunnel to port {PORT}), then in the
     Twilio console set the line's "A message comes in" webhook to https://<public host>/twilio/sms
     and put that https://<public host> in .env as PUBLIC_BASE_URL, and your auth token as
     TWILIO_AUTH_TOKEN.
  4. Health check: curl http://127.0.0.1:{PORT}/healthz
"""
)
