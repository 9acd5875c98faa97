"""Write a local .env from .env.example with fresh secrets, for `make run`."""

import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bot import notes

DEMO_KEY = notes.generate("consentline/demo-company/evidence")
FILLED = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(32),
    "TWILIO_AUTH_TOKEN": lambda: "local-" + secrets.token_hex(16),
    "SIMULATOR_ENABLED": lambda: "true",
    "COMPANY_NAME": lambda: "Demo Company",
    # Checkpoints signed and witnessed locally from the first text on (docs/evidence.md).
    "EVIDENCE_SIGNING_KEY": lambda: str(DEMO_KEY),
    "EVIDENCE_PUBLIC_KEY": lambda: str(DEMO_KEY.verifier),
    "EVIDENCE_WITNESS_DIR": lambda: "instance/witness",
}


def main(example: str, target: str) -> None:
    lines = []
    for line in Path(example).read_text().splitlines():
        key = line.split("=", 1)[0].lstrip("# ").strip()
        if key in FILLED and "=" in line:
            line = f"{key}={FILLED[key]()}"
        lines.append(line)
    Path(target).write_text("\n".join(lines) + "\n")
    print(f"wrote {target} with fresh local secrets (edit it to use your Twilio auth token)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
