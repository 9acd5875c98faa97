"""SPEC §10: the Merkle log, signed checkpoints and their witnesses hold against
whoever can write the database: each attack below is made as an insider would
(straight SQL, chains and tree recomputed where that helps the forger), and
``audit verify`` must fail naming line and contact."""

import email
import email.policy
import hashlib
import threading
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update

from bot import evidence, ledger, merkle, notes
from bot.extensions import db
from bot.models import (
    Attestation,
    CheckpointRecord,
    Conversation,
    Message,
    TreeHead,
    TreeNode,
    WitnessCopy,
    utcnow,
)
from support import CONTACT, LINE, OTHER, free_port

KEY = notes.generate("consentline/acme-plumbing/evidence")


@pytest.fixture
def witness_dir(tmp_path):
    return tmp_path / "witness"


@pytest.fixture
def env_overrides(witness_dir):
    return {"EVIDENCE_SIGNING_KEY": str(KEY), "EVIDENCE_WITNESS_DIR": str(witness_dir)}


def run(runner, *args):
    return runner.invoke(args=list(args))


def verify(runner, *checkpoints):
    args = ["audit", "verify"]
    for path in checkpoints:
        args += ["--checkpoint", str(path)]
    return run(runner, *args)


def checkpoint(runner):
    result = run(runner, "audit", "checkpoint")
    assert result.exit_code == 0, result.output
    return result.output


def conversation_id(app, contact=CONTACT):
    with app.app_context():
        return db.session.execute(
            select(Conversation.id).where(Conversation.contact == contact)
        ).scalar_one()


def sql(app, *statements):
    with app.app_context():
        for statement in statements:
            db.session.execute(statement)
        db.session.commit()


def rechain(app, conv_id):
    """What a forger does after editing entries: recompute the conversation's chain."""
    with app.app_context():
        conv = db.session.get(Conversation, conv_id)
        entries = db.session.scalars(
            select(Attestation)
            .where(Attestation.conversation_id == conv_id)
            .order_by(Attestation.seq)
        ).all()
        prev = "0" * 64
        for seq, entry in enumerate(entries, 1):
            entry.seq, entry.prev_hash = seq, prev
            values = {name: getattr(entry, name) for name in evidence.HASHED}
            entry.hash = prev = evidence.digest(conv.line, conv.contact, prev, values)
        conv.chain_head, conv.chain_length = prev, len(entries)
        db.session.commit()


def rebuild_tree(app):
    """And then the whole Merkle tree, from the entries as they now are."""
    with app.app_context():
        db.session.execute(update(Attestation).values(leaf_index=None))
        db.session.execute(delete(TreeNode))
        db.session.execute(update(TreeHead).values(size=0, root=merkle.EMPTY_ROOT.hex()))
        db.session.commit()
        ledger.sequence()


# -- the sequencer ---------------------------------------------------------------------------


def test_every_entry_gets_one_leaf_in_the_order_it_was_written(history, runner):
    result = run(runner, "audit", "sequence")
    assert result.exit_code == 0 and "20 entries placed" in result.output
    assert "0 entries placed" in run(runner, "audit", "sequence").output
    ids = [conversation_id(history), conversation_id(history, OTHER)]
    with history.app_context():
        placed = db.session.execute(
            select(Attestation.id, Attestation.leaf_index).order_by(Attestation.id)
        ).all()
        size, root = ledger.head(db.session.connection())
        rows = evidence.entries_of(ids)
    assert [index for _, index in placed] == list(range(20))
    leaves = [
        merkle.leaf_hash(evidence.stored_leaf(r.leaf_values))
        for r in sorted(rows, key=lambda r: r.leaf_index)
    ]
    assert (size, root) == (20, merkle.root(leaves))
    assert verify(runner).exit_code == 0


def test_an_entry_left_out_of_the_tree_too_long_is_reported(history, runner):
    sql(
        history,
        update(Attestation)
        .where(Attestation.seq == 1, Attestation.conversation_id == conversation_id(history))
        .values(created_at=utcnow() - evidence.LATE * 2),
    )
    rechain(history, conversation_id(history))
    result = verify(runner)
    assert result.exit_code != 0
    assert f"contact {CONTACT}: entry 1 has been left out of the Merkle tree" in result.output


# -- checkpoints and witnesses -----------------------------------------------------------------


def test_a_checkpoint_is_signed_witnessed_and_not_signed_twice(history, runner, witness_dir):
    note = checkpoint(runner)
    parsed = notes.open_checkpoint(note, KEY.verifier)
    assert parsed.origin == "consentline/acme-plumbing/evidence" and parsed.size == 20
    files = sorted(p.name for p in witness_dir.iterdir())
    assert files == ["checkpoint-00000001-20.txt", "witness.log"]
    assert (witness_dir / files[0]).read_text() == note
    assert "size 20 root " in (witness_dir / "witness.log").read_text()
    again = run(runner, "audit", "checkpoint")
    assert again.exit_code == 0 and again.stdout == note
    assert "nothing new since the last checkpoint" in again.output
    with history.app_context():
        assert db.session.execute(select(CheckpointRecord.id)).scalars().all() == [1]
    assert verify(runner, witness_dir / files[0]).exit_code == 0


def test_without_a_key_evidence_is_unsigned_and_says_so(app, twilio, employee, runner):
    app.config["EVIDENCE_SIGNING_KEY"] = None
    twilio.sms(CONTACT, "Hi")
    result = run(runner, "audit", "checkpoint")
    assert result.exit_code != 0 and "evidence is unsigned" in result.output
    result = verify(runner)
    assert result.exit_code == 0 and "note: evidence is unsigned" in result.output


def test_a_checkpoint_the_log_no_longer_holds_is_never_followed_by_another(history, runner):
    checkpoint(runner)
    sql(history, update(Attestation).where(Attestation.id == 3).values(body="forged"))
    rechain(history, conversation_id(history))
    rebuild_tree(history)
    result = run(runner, "audit", "checkpoint")
    assert result.exit_code != 0 and "the log no longer holds the last checkpoint" in result.output
    with history.app_context():
        assert db.session.execute(select(CheckpointRecord.id)).scalars().all() == [1]


class Inbox:
    def __init__(self, refuse=False):
        self.messages, self.refuse = [], refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return "550 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


def test_each_checkpoint_is_mailed_and_a_refusing_server_is_retried(history, runner, smtp):
    inbox, url = smtp
    history.config.update(EVIDENCE_WITNESS_EMAIL="evidence@acme.example", SMTP_URL=url)
    inbox.refuse = True
    for _ in range(2):  # made and refused; tried again and refused again
        result = run(runner, "audit", "checkpoint")
        assert result.exit_code != 0
        assert "witness mail:evidence@acme.example failed" in result.output
        assert "550" in result.output
    with history.app_context():
        copy = db.session.scalars(
            select(WitnessCopy).where(WitnessCopy.witness.like("mail:%"))
        ).one()
        assert copy.delivered_at is None and copy.attempts == 2 and "550" in copy.last_error
        assert ledger.status()["failing"]
    inbox.refuse = False
    again = run(runner, "audit", "checkpoint")  # nothing new to sign; the witness is retried
    assert again.exit_code == 0, again.output
    [raw] = inbox.messages
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["To"] == "evidence@acme.example"
    assert again.stdout in mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    with history.app_context():
        copy = db.session.scalars(
            select(WitnessCopy).where(WitnessCopy.witness.like("mail:%"))
        ).one()
        assert copy.delivered_at is not None and "Subject: Evidence checkpoint 1" in copy.copy


# -- attacks -------------------------------------------------------------------------------------


def expect_named(result, contact, *words):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("BROKEN")]
    named = [line for line in lines if f"line {LINE} contact {contact}:" in line]
    assert named, result.output
    for word in words:
        assert any(word in line for line in named), result.output
    return lines


def rewrite_the_yes(app):
    """A forger turns the contact's YES into "Hello?", in the evidence and in the portal's
    log, and recomputes the conversation's chain."""
    cid = conversation_id(app)
    sql(
        app,
        update(Attestation)
        .where(Attestation.conversation_id == cid, Attestation.body == "YES")
        .values(body="Hello?"),
        update(Message)
        .where(Message.conversation_id == cid, Message.body == "YES")
        .values(body="Hello?"),
    )
    rechain(app, cid)


def test_a_conversation_rewritten_with_its_chain_is_named_by_its_leaves(history, runner):
    ledger_ready(history, runner)
    rewrite_the_yes(history)
    lines = expect_named(verify(runner), CONTACT, "its leaf is not the one the tree holds")
    assert not any(OTHER in line for line in lines), lines


def test_a_conversation_rewritten_with_its_chain_and_the_tree_fails_the_checkpoint(history, runner):
    ledger_ready(history, runner)
    rewrite_the_yes(history)
    rebuild_tree(history)
    result = verify(runner)
    expect_named(result, CONTACT, "which a checkpoint no longer holds")
    assert "checkpoint 1 in the database (size 20) does not hold" in result.output
    assert "witness copy checkpoint-00000001-20.txt (size 20) does not hold" in result.output


def test_a_conversation_deleted_whole_fails_the_checkpoint(history, runner):
    ledger_ready(history, runner)
    cid = conversation_id(history, OTHER)
    sql(
        history,
        delete(Attestation).where(Attestation.conversation_id == cid),
        delete(Message).where(Message.conversation_id == cid),
        delete(Conversation).where(Conversation.id == cid),
    )
    rebuild_tree(history)
    result = verify(runner)
    assert result.exit_code != 0
    assert "holds 20 entries; the log now has" in result.output


def test_a_truncated_log_fails_the_checkpoint(history, runner):
    ledger_ready(history, runner)
    with history.app_context():
        last = db.session.execute(
            select(Attestation).order_by(Attestation.id.desc()).limit(1)
        ).scalar_one()
        conv_id = last.conversation_id
    sql(history, delete(Attestation).where(Attestation.id == last.id))
    rechain(history, conv_id)
    rebuild_tree(history)
    result = verify(runner)
    assert result.exit_code != 0 and "holds 20 entries; the log now has 19" in result.output


def test_a_checkpoint_signed_by_another_key_is_refused(history, runner, tmp_path):
    ledger_ready(history, runner)
    with history.app_context():
        size, root = ledger.head(db.session.connection())
    other = notes.generate(KEY.name)
    forged = tmp_path / "forged.txt"
    forged.write_text(notes.sign_note(notes.Checkpoint(KEY.name, size, root).body, other))
    result = verify(runner, forged)
    assert result.exit_code != 0
    assert f"{forged}: the checkpoint is not signed by {KEY.name}" in result.output


def test_two_inconsistent_checkpoints_are_reported(history, runner, tmp_path):
    ledger_ready(history, runner)
    fork = tmp_path / "fork.txt"
    fork.write_text(
        notes.sign_note(notes.Checkpoint(KEY.name, 20, hashlib.sha256(b"fork").digest()).body, KEY)
    )
    result = verify(runner, fork)
    assert result.exit_code != 0
    assert "are not consistent" in result.output and str(fork) in result.output


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            lambda cid: (
                update(Message)
                .where(Message.conversation_id == cid, Message.body == "Hi")
                .values(body="Hi, stop texting me")
            ),
            "differs from its evidence",
        ),
        (
            lambda cid: delete(Message).where(
                Message.conversation_id == cid, Message.body == "YES"
            ),
            "is in the evidence, not in the log the portal shows",
        ),
        (
            lambda cid: (
                update(Conversation).where(Conversation.id == cid).values(state="opted_out")
            ),
            "but its events leave it",
        ),
    ],
    ids=["message-edited", "message-deleted", "state-without-event"],
)
def test_what_the_portal_shows_is_held_against_the_log(history, runner, change, words):
    ledger_ready(history, runner)
    sql(history, change(conversation_id(history)))
    expect_named(verify(runner), CONTACT, words)


def test_a_message_inserted_into_the_portals_log_is_named(history, runner):
    ledger_ready(history, runner)
    cid = conversation_id(history)
    with history.app_context():
        row = (
            db.session.execute(
                select(Message.__table__).where(Message.conversation_id == cid).limit(1)
            )
            .mappings()
            .one()
        )
        db.session.execute(
            insert(Message.__table__).values(
                {k: v for k, v in row.items() if k != "id"}
                | {"ref": "forged-ref", "twilio_sid": None, "body": "YES please"}
            )
        )
        db.session.commit()
    expect_named(
        verify(runner),
        CONTACT,
        "text forged-ref is in the log the portal shows, not in the evidence",
    )


def ledger_ready(app, runner):
    """Every entry in the tree, and a witnessed checkpoint of it."""
    checkpoint(runner)
    assert verify(runner).exit_code == 0


# -- the tree against any single change, at random --------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 40), st.data())
def test_any_single_change_before_a_checkpoint_breaks_it(size, data):
    """An edit, insert, delete, swap or truncation among the first ``signed`` leaves
    gives another root at that size, or too few leaves: the checkpoint catches it."""
    leaves = [b"record %d salt %d" % (i, i * 7919) for i in range(size)]
    signed = data.draw(st.integers(1, size))
    expected = merkle.root([merkle.leaf_hash(x) for x in leaves[:signed]])
    at = data.draw(st.integers(0, signed - 1))
    kind = data.draw(st.sampled_from(["edit", "insert", "delete", "swap", "truncate"]))
    changed = list(leaves)
    if kind == "edit":
        changed[at] = changed[at] + b" "
    elif kind == "insert":
        changed.insert(at, b"forged")
    elif kind == "delete":
        del changed[at]
    elif kind == "swap":
        other = data.draw(st.integers(0, size - 1).filter(lambda i: leaves[i] != leaves[at]))
        changed[at], changed[other] = changed[other], changed[at]
    else:
        changed = changed[:at]
    hashed = [merkle.leaf_hash(x) for x in changed]
    assert len(hashed) < signed or merkle.root(hashed[:signed]) != expected


def test_thirty_webhooks_at_once_are_each_sequenced_once(database_url, employee, app):
    """Thirty contacts' first texts against gunicorn (four workers), whose workers
    sequence after answering: every entry placed once, no gap, and verify passes."""
    import requests
    from twilio.request_validator import RequestValidator

    from support import TOKEN, gunicorn

    with gunicorn(database_url, workers=4, EVIDENCE_SIGNING_KEY=str(KEY)) as base:
        url = base + "/twilio/sms"
        validator = RequestValidator(TOKEN)
        barrier = threading.Barrier(30)
        codes = []

        def send(i):
            params = {
                "MessageSid": f"SM{i:032x}",
                "From": f"+1415555{1000 + i}",
                "To": LINE,
                "Body": "Hi",
            }
            headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
            barrier.wait()
            codes.append(requests.post(url, data=params, headers=headers, timeout=60).status_code)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * 30
        import time

        deadline = time.monotonic() + 20
        while True:  # the workers' own sequencer, within seconds of the last answer
            with app.app_context():
                left = db.session.execute(
                    select(Attestation.id).where(Attestation.leaf_index.is_(None))
                ).all()
                db.session.rollback()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert left == []
    with app.app_context():
        indexes = (
            db.session.execute(select(Attestation.leaf_index).order_by(Attestation.leaf_index))
            .scalars()
            .all()
        )
        size, _ = ledger.head(db.session.connection())
    assert indexes == list(range(size)) and size >= 60
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output


def test_the_witness_directory_is_written_and_never_overwritten(history, runner, witness_dir):
    checkpoint(runner)
    path = next(witness_dir.glob("checkpoint-*.txt"))
    assert not (path.stat().st_mode & 0o222)  # written once, read-only
    assert Path(path).read_text().startswith(KEY.name + "\n20\n")
