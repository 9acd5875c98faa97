"""SPEC §10: every text and consent event chained per conversation; verify finds tampering."""

import csv
import hashlib
import itertools
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update

from bot import evidence
from bot.extensions import db
from bot.models import Attestation, Conversation, RecordKind
from support import CONTACT, OTHER


def verify(runner):
    return runner.invoke(args=["audit", "verify"])


def test_intact_chains_verify(history, runner):
    result = verify(runner)
    assert result.exit_code == 0, result.output
    assert "OK: the log is intact (2 conversations, 20 entries" in result.output


def test_consent_events_carry_what_section_10_asks(history):
    with history.app_context():
        entries = db.session.execute(
            select(Attestation)
            .where(Attestation.kind == RecordKind.CONSENT)
            .order_by(Attestation.id)
        ).scalars()
        got = [(e.event.value, e.mode.value, e.cause_body, e.signature_valid) for e in entries]
        opted_in = db.session.execute(
            select(Attestation).where(Attestation.event == "opted_in")
        ).scalar_one()
    assert got == [
        ("request_sent", "consent", "Hi", True),
        ("opted_in", "consent", "YES", True),
        ("request_sent", "consent", f"{OTHER} Your quote", True),
        ("opted_out", "consent", "STOP", True),
    ]
    assert opted_in.cause_sid.startswith("SM")
    assert opted_in.shown_text.startswith("[Auto Message] Opt in confirmed.")


def test_chain_links_each_entry_to_the_previous(history):
    with history.app_context():
        conv = db.session.execute(select(Conversation).where(Conversation.contact == CONTACT))
        conv = conv.scalar_one()
        entries = (
            db.session.execute(
                select(Attestation)
                .where(Attestation.conversation_id == conv.id)
                .order_by(Attestation.seq)
            )
            .scalars()
            .all()
        )
    assert [e.seq for e in entries] == list(range(1, conv.chain_length + 1))
    assert entries[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert entries[-1].hash == conv.chain_head


def _tamper(app, statement):
    with app.app_context():
        db.session.execute(statement)
        db.session.commit()


@pytest.mark.parametrize(
    "tampering",
    [
        pytest.param(
            lambda cid: (
                update(Attestation)
                .where(Attestation.conversation_id == cid, Attestation.seq == 1)
                .values(body="I never wrote this")
            ),
            id="edited-body",
        ),
        pytest.param(
            lambda cid: (
                update(Attestation)
                .where(Attestation.conversation_id == cid, Attestation.event == "opted_in")
                .values(method="phone call")
            ),
            id="edited-event",
        ),
        pytest.param(
            lambda cid: delete(Attestation).where(
                Attestation.conversation_id == cid, Attestation.seq == 2
            ),
            id="deleted-middle",
        ),
        pytest.param(
            lambda cid: delete(Attestation).where(
                Attestation.conversation_id == cid,
                Attestation.seq
                == select(func.max(Attestation.seq))
                .where(Attestation.conversation_id == cid)
                .scalar_subquery(),
            ),
            id="deleted-last",
        ),
    ],
)
def test_verify_names_the_conversation_after_tampering(history, runner, tampering):
    with history.app_context():
        cid = db.session.execute(
            select(Conversation.id).where(Conversation.contact == CONTACT)
        ).scalar_one()
    _tamper(history, tampering(cid))
    result = verify(runner)
    assert result.exit_code != 0
    assert f"BROKEN line +14155550100 contact {CONTACT}" in result.output
    assert OTHER not in result.output  # the other conversation's chain still holds


def test_verify_catches_an_inserted_row(history, runner):
    with history.app_context():
        conv = db.session.execute(select(Conversation).where(Conversation.contact == OTHER))
        conv = conv.scalar_one()
        # A forger appends a well-formed entry but cannot move the recorded head.
        entry = Attestation(
            conversation_id=conv.id,
            seq=conv.chain_length + 1,
            kind=RecordKind.CONSENT,
            event="opted_in",
            prev_hash=conv.chain_head,
            hash="f" * 64,
        )
        db.session.add(entry)
        db.session.execute(
            text("UPDATE conversations SET updated_at = updated_at WHERE id = :id"), {"id": conv.id}
        )
        db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0
    assert f"contact {OTHER}" in result.output


def test_export_streams_every_entry_as_csv(history, runner, tmp_path):
    out = tmp_path / "log.csv"
    result = runner.invoke(args=["audit", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with history.app_context():
        total = db.session.execute(select(func.count(Attestation.id))).scalar()
    assert len(rows) == total
    assert rows[0]["body"] == "Hi" and rows[0]["contact"] == CONTACT
    assert {r["event"] for r in rows} >= {"request_sent", "opted_in", "opted_out"}
    # Standard output without --out, and --since filters by day.
    assert runner.invoke(args=["audit", "export"]).output.count("\n") == total + 1
    later = runner.invoke(args=["audit", "export", "--since", "2999-01-01"])
    assert later.output.strip() == ",".join(evidence.EXPORT_COLUMNS)
    bad = runner.invoke(args=["audit", "export", "--since", "yesterday"])
    assert bad.exit_code != 0 and "YYYY-MM-DD" in bad.output


def _spy_on_fsync(monkeypatch, *paths):
    """The files (by path) that os.fsync is called for, in order."""
    calls, real = [], os.fsync

    def spy(fd):
        path = os.path.realpath(f"/proc/self/fd/{fd}")
        if path in paths:
            calls.append(path)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_export_to_a_file_is_on_disk_when_the_command_says_it_is_written(
    history, runner, tmp_path, monkeypatch
):
    """``--out``: the file is flushed, then its folder, before the command ends. The file
    is the export, byte for byte: UTF-8, and a line break inside a text kept as it was."""
    text_ = "Café, ☕ at 8?\r\nSecond line"
    with history.app_context():
        first = db.session.execute(select(func.min(Attestation.id))).scalar()
        db.session.execute(update(Attestation).where(Attestation.id == first).values(body=text_))
        db.session.commit()
    out = tmp_path / "log.csv"
    calls = _spy_on_fsync(monkeypatch, str(out), str(tmp_path))
    result = runner.invoke(args=["audit", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [str(out), str(tmp_path)]
    assert out.read_text(encoding="utf-8") == runner.invoke(args=["audit", "export"]).output
    assert f'"{text_}"'.encode() in out.read_bytes()


def test_export_to_a_device_or_pipe_is_written_without_a_flush(history, runner, monkeypatch):
    """``--out /dev/null`` (or a pipe): nothing to flush, and no error for it."""
    calls = _spy_on_fsync(monkeypatch, "/dev/null")
    result = runner.invoke(args=["audit", "export", "--out", "/dev/null"])
    assert result.exit_code == 0, result.output
    assert "entries written to /dev/null" in result.output and calls == []


def test_digest_covers_every_hashed_field():
    base = {name: None for name in evidence.HASHED} | {"seq": 1, "body": "Hi"}
    reference = evidence.digest("+1", "+2", "0" * 64, base)
    for name in evidence.HASHED:
        changed = dict(base, **{name: "x" if name != "seq" else 2})
        assert evidence.digest("+1", "+2", "0" * 64, changed) != reference, name
    assert evidence.digest("+1", "+3", "0" * 64, base) != reference
    assert evidence.digest("+1", "+2", "1" * 64, base) != reference


@pytest.mark.parametrize("column", ["kind", "event", "created_at"])
def test_verify_survives_garbage_in_a_column_and_names_the_conversation(history, runner, column):
    with history.app_context():
        cid = db.session.execute(
            select(Conversation.id).where(Conversation.contact == CONTACT)
        ).scalar_one()
        value = "not-a-date" if column == "created_at" else "bogus"
        if db.engine.dialect.name == "postgresql" and column == "created_at":
            value = "2001-01-01 00:00:00+00"
        db.session.execute(
            text(f"UPDATE attestations SET {column} = :v WHERE conversation_id = :c AND seq = 2"),
            {"v": value, "c": cid},
        )
        db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0
    assert f"contact {CONTACT}: entry 2 was altered" in result.output
    assert runner.invoke(args=["audit", "export"]).exit_code == 0


def test_verify_counts_entries_that_lost_their_conversation(history, runner, database_url):
    """Someone with the database's own tools deletes a conversation, foreign keys off."""
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as raw:
            raw.execute("DELETE FROM conversations WHERE contact = ?", (OTHER,))
    else:
        with history.app_context():
            db.session.execute(text("SET session_replication_role = replica"))
            db.session.execute(text("DELETE FROM conversations WHERE contact = :c"), {"c": OTHER})
            db.session.commit()
    result = verify(runner)
    assert result.exit_code != 0 and "entries belong to no conversation" in result.output
    exported = runner.invoke(args=["audit", "export"]).output
    assert OTHER in exported  # the orphaned entries are still exported


def test_a_long_export_does_not_hold_up_webhooks(history, database_url):
    """SQLite: the reader takes no write lock, so a webhook is answered meanwhile."""
    from support import Twilio, make_app

    reader = make_app(database_url)
    with reader.app_context():
        from bot.database import read_only

        read_only()
        db.session.execute(select(func.count(Attestation.id))).scalar()  # transaction open
        writer = make_app(database_url)
        with writer.test_request_context():
            answer = Twilio(writer.test_client()).sms("+14155550177", "Hi")
        assert len(answer) == 2
        db.session.rollback()
        for app in (reader, writer):
            with app.app_context():
                db.engine.dispose()


def _more_history(twilio, count: int) -> list[str]:
    contacts = [f"+1212555{n:04d}" for n in range(count)]
    for contact in contacts:
        twilio.sms(contact, "Hi")
        twilio.sms(contact, "YES")
    return contacts


def test_verify_split_across_processes_reports_what_one_process_does(history, twilio):
    """A large log is walked by several spawned processes, each a range of conversations."""
    contacts = _more_history(twilio, 6)
    with history.app_context():
        ranges = evidence._ranges(3)
        alone = evidence.verify(processes=1)
        split = evidence.verify(processes=3)
        ids = db.session.execute(select(Conversation.id).order_by(Conversation.id)).scalars()
        ids = list(ids)
        target = db.session.execute(
            select(Conversation.id).where(Conversation.contact == contacts[-1])
        ).scalar_one()
    # The ranges cover every conversation exactly once, and there are three.
    assert len(ranges) == 3
    covered = [i for i in ids for low, high in ranges if (low or 0) <= i < (high or 10**9)]
    assert covered == ids
    assert (split.ok, split.conversations, split.entries) == (True, 8, alone.entries)
    assert alone.entries > 8 * 3
    # A break in the last range is found by its process and named.
    _tamper(
        history,
        update(Attestation)
        .where(Attestation.conversation_id == target, Attestation.seq == 1)
        .values(body="forged"),
    )
    with history.app_context():
        broken = evidence.verify(processes=3)
    assert (contacts[-1], "entry 1 was altered") in [(b.contact, b.reason) for b in broken.broken]
    assert {b.contact for b in broken.broken} == {contacts[-1]}
    assert broken.entries == alone.entries


def test_verify_goes_parallel_from_the_threshold(history, twilio, monkeypatch):
    _more_history(twilio, 2)
    seen = []
    monkeypatch.setattr(evidence, "PARALLEL_FROM", 3)
    monkeypatch.setattr(evidence, "_ranges", lambda parts: seen.append(parts) or [(None, None)])
    monkeypatch.setattr(evidence, "_cores", lambda: 2)
    with history.app_context():
        report = evidence.verify()
    assert seen == [2] and report.ok and report.conversations == 4


def test_message_refs_are_unguessable_and_sort_by_creation_time():
    from bot.models import new_ref

    refs = [new_ref() for _ in range(2000)]
    assert len(set(refs)) == len(refs)
    assert all(len(r) == 31 and int(r, 16) >= 0 for r in refs)  # fits String(32)
    assert [r[:11] for r in refs] == sorted(r[:11] for r in refs)  # time first
    # 80 random bits after the time: the suffixes of refs made in one millisecond differ.
    assert len({r[11:] for r in refs}) == len(refs)


def test_times_hash_in_the_form_existing_chains_were_sealed_with():
    """YYYY-MM-DDTHH:MM:SS.ffffffZ in UTC, whatever zone or precision the value has."""
    from datetime import UTC, datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    from bot.evidence import canonical

    moments = [
        datetime(2026, 12, 1, 7, 27, 44, 0, UTC),
        datetime(2026, 12, 1, 7, 27, 44, 123456, UTC),
        datetime(2026, 6, 1, 9, 0, 0, 5, ZoneInfo("Etc/UTC")),
        datetime(2026, 6, 1, 9, 0, 0, 5, timezone(timedelta(hours=-7))),
        datetime(2026, 6, 1, 23, 59, 59, 999999, ZoneInfo("Europe/Paris")),
    ]
    for moment in moments:
        assert canonical(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert canonical(moments[3]) == "2026-06-01T16:00:00.000005Z"
    # As SQLite keeps them (naive UTC text) and as Postgres gives them back: the same form.
    for moment in moments:
        stored = moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        assert evidence._stored_time(stored) == canonical(moment) == evidence._stored_time(moment)


def test_the_canonical_form_of_an_entry_does_not_drift():
    """Hashes of stored chains must verify forever: these were computed by the encoding
    every earlier release used (times in UTC with microseconds and Z, enums as their
    values, JSON without ASCII escapes or spaces)."""
    from datetime import timedelta, timezone
    from types import SimpleNamespace

    from bot.consent import Event, Mode, State
    from bot.models import Direction

    values = dict.fromkeys(evidence.HASHED) | {
        "seq": 7,
        "created_at": datetime(2026, 12, 1, 9, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))),
        "kind": RecordKind.CONSENT,
        "direction": Direction.INBOUND,
        "body": 'Oui, "d\'accord" é😀\n<&>',
        "event": Event.OPTED_IN,
        "mode": Mode.CONSENT,
        "state": State.PENDING,
        "signature_valid": True,
    }
    line, contact = "+15550002222", "whatsapp:+15550001111"
    assert evidence.digest(line, "whatsapp:+15550001111", "ab" * 32, values) == (
        "f67cca561f87f37e57a5d6bbe84fd7a8eebd3dd6120280edc8263e0a5a277e8c"
    )
    # The same, spelled out: the JSON of the canonical values, after the previous hash.
    canonical = [line, contact] + [
        values[name].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if name == "created_at"
        else values[name].value
        if hasattr(values[name], "value")
        else values[name]
        for name in evidence.HASHED
    ]
    text = "ab" * 32 + json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == evidence.digest(
        line, contact, "ab" * 32, values
    )
    chain = SimpleNamespace(
        id=1, line="+15550002222", contact="+15550001111", chain_head="0" * 64, chain_length=4
    )
    fields = {k: v for k, v in values.items() if v is not None and k != "seq"}
    row = evidence.entry(chain, **fields)
    assert row["seq"] == 5 and row["prev_hash"] == "0" * 64
    assert row["hash"] == "88a0a97460ba08782c63a28bcc44013ee1b8ef6812a849be73fb42485627c2db"
    assert chain.chain_head == row["hash"] and chain.chain_length == 5
    with pytest.raises(TypeError, match="not JSON serializable"):
        evidence.digest(line, contact, "0" * 64, values | {"note": object()})


def test_every_enum_an_entry_can_hold_is_written_as_its_value():
    """An enum is hashed as its value, the text every earlier release wrote for it."""
    import enum

    from bot import consent, keywords, models

    found = [
        member
        for module in (models, consent, keywords)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, enum.Enum)
        if cls.__module__ == module.__name__
        for member in cls
    ]
    assert len(found) > 20
    for member in found:
        assert isinstance(member, str), member
        assert str.__str__(member) == member.value, member
        assert evidence.canonical(member) == member.value
        assert json.dumps([evidence.canonical(member)]) == json.dumps([member.value])


def test_a_log_written_by_an_earlier_release_still_verifies(scratch_url):
    """tests/data/log-51ff420.json: every table of a log that release 51ff420 wrote
    (with its own hashing code) through real webhooks, callbacks and portal actions,
    on the schema of its day. Migration 0008 brings it into the Merkle tree in its
    original order; its chains must verify as they are, and a changed byte must not."""
    from flask_migrate import upgrade

    from bot.models import Employee, Message, Setting
    from support import make_app

    app = make_app(scratch_url)
    runner = app.test_cli_runner()
    dump = json.loads((Path(__file__).parent / "data" / "log-51ff420.json").read_text())
    tables = dump["tables"]
    with app.app_context():
        upgrade(revision="0007")
        for model in (Employee, Setting, Conversation, Message, Attestation):
            table = model.__table__
            rows = [
                {k: _typed(table.c[k], v) for k, v in row.items()} for row in tables[table.name]
            ]
            db.session.execute(table.insert(), rows)
        db.session.commit()
        upgrade()
        placed = db.session.execute(
            select(Attestation.id, Attestation.leaf_index, Attestation.hash).order_by(
                Attestation.id
            )
        ).all()
    assert [index for _, index, _ in placed] == list(range(83))  # in the original order
    assert [h for _, _, h in placed] == [row["hash"] for row in tables["attestations"]]
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "8 conversations, 83 entries, 83 in the Merkle tree" in result.output
    with app.app_context():
        db.session.execute(
            update(Attestation).where(Attestation.id == 1).values(body=Attestation.body + " ")
        )
        db.session.commit()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code != 0 and "was altered" in result.output
    with app.app_context():
        db.engine.dispose()  # before the scratch database is dropped


def _typed(column, value):
    """A dumped value as its column takes it (times were dumped in ISO 8601)."""
    if value is not None and column.name in (
        "created_at",
        "updated_at",
        "last_request_at",
        "addressed_at",
    ):
        return datetime.fromisoformat(value)
    return value
