"""Typed models: employees, conversations, messages, the attestation log, settings."""

import json
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bot import consent
from bot.consent import Disposition
from bot.extensions import db

GENESIS = "0" * 64


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_ref() -> str:
    """A public, unguessable id for a message (used in status-callback URLs).

    Eleven hex digits of milliseconds since 1970, then 80 random bits: refs made
    later sort later, so new rows go to the end of the unique index on
    ``messages.ref`` instead of to random pages of it, which keeps a webhook's
    inserts cheap when the log holds millions of texts.
    """
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(10)}"


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _enum(enum_cls: type[StrEnum], length: int = 20) -> Enum:
    """A string-valued enum column (no native type, no CHECK to migrate)."""
    return Enum(
        enum_cls,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda cls: [m.value for m in cls],
    )


# Delivery statuses that mean a text did not arrive (the partial index's own words).
FAILED = ("failed", "undelivered")
FAILED_SQL = "status IN ('failed', 'undelivered')"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class RecordKind(StrEnum):
    MESSAGE = "message"  # a text in or out, as received or sent
    STATUS = "status"  # Twilio reported a new delivery status
    DISPOSITION = "disposition"  # a held text was released or discarded
    CONSENT = "consent"  # a consent event (SPEC §10)
    REVIEW = "review"  # an admin reviewed a revocation hint


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Setting(db.Model):
    """An organisation setting made in the CLI or portal; wins over the environment."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Employee(Timestamps, db.Model):
    """A person with a line; ``mode`` None follows the organisation default."""

    __tablename__ = "employees"
    __table_args__ = (
        # One active employee per line; a deactivated one keeps its history.
        Index(
            "uq_employees_active_line",
            "line",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cell: Mapped[str] = mapped_column(String(32))
    line: Mapped[str] = mapped_column(String(32))
    mode: Mapped[consent.Mode | None] = mapped_column(_enum(consent.Mode))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Conversation(Timestamps, db.Model):
    """One (line, contact address) pair: where consent lives (SPEC §1–§2)."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("line", "contact"),
        Index("ix_conversations_line_addressed_at", "line", "addressed_at"),
        # The portal: contacts newest first (by key), a contact by its whole number.
        Index("ix_conversations_updated_at_id", "updated_at", "id"),
        Index("ix_conversations_contact", "contact"),
        Index("ix_conversations_state", "state"),  # the dashboard's counts
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    line: Mapped[str] = mapped_column(String(255))
    contact: Mapped[str] = mapped_column(String(255))
    contact_name: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[consent.State] = mapped_column(_enum(consent.State), default=consent.State.NEW)
    initiator: Mapped[consent.Role | None] = mapped_column(_enum(consent.Role))
    last_request_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The opt-out came classified by Twilio's Advanced Opt-Out (see bot.consent).
    twilio_opt_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When the contact last wrote or the employee last addressed them: the
    # line's current contact is the conversation with the latest value.
    addressed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    chain_head: Mapped[str] = mapped_column(String(64), default=GENESIS)
    chain_length: Mapped[int] = mapped_column(Integer, default=0)

    messages: Mapped[list["Message"]] = relationship(
        back_populates="conversation", order_by="Message.id", lazy="raise_on_sql"
    )


class Message(Timestamps, db.Model):
    """A text in or out, with its delivery status and what became of it."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_id_disposition", "conversation_id", "disposition"),
        # One text per Twilio SID. Only the texts that have one are indexed: the
        # relay's own texts get theirs later, if ever, and no lookup asks for NULL.
        Index(
            "uq_messages_twilio_sid",
            "twilio_sid",
            unique=True,
            sqlite_where=text("twilio_sid IS NOT NULL"),
            postgresql_where=text("twilio_sid IS NOT NULL"),
        ),
        # The portal: the log newest first (by key, filtered by date), and the short
        # lists of revocation hints to review and of failed texts.
        Index("ix_messages_created_at_id", "created_at", "id"),
        Index(
            "ix_messages_pending_hints",
            "id",
            sqlite_where=text("hint = 1 AND review IS NULL"),
            postgresql_where=text("hint AND review IS NULL"),
        ),
        Index(
            "ix_messages_failed",
            "id",
            sqlite_where=text(FAILED_SQL),
            postgresql_where=text(FAILED_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True, default=new_ref)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    # The line's number, as on the conversation: the log of one line needs no join.
    line: Mapped[str] = mapped_column(String(32), server_default="")
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    # Who wrote it: the contact, the employee, or (None) the bot itself.
    author: Mapped[consent.Role | None] = mapped_column(_enum(consent.Role))
    sender: Mapped[str] = mapped_column(String(255))
    recipient: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text, default="")
    # For an employee's text that named its contact: the part to deliver.
    relay_body: Mapped[str | None] = mapped_column(Text)
    media_json: Mapped[str] = mapped_column(Text, default="[]")
    twilio_sid: Mapped[str | None] = mapped_column(String(64))
    idempotency_token: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(24))
    error_code: Mapped[str | None] = mapped_column(String(16))
    disposition: Mapped[Disposition | None] = mapped_column(_enum(Disposition))
    text_key: Mapped[str | None] = mapped_column(String(80))
    # For a relayed text: the ref of the inbound text it carries.
    source_ref: Mapped[str | None] = mapped_column(String(32))
    hint: Mapped[bool] = mapped_column(Boolean, default=False)
    recovered: Mapped[bool] = mapped_column(Boolean, default=False)
    signature_valid: Mapped[bool | None] = mapped_column(Boolean)
    # The TwiML answered to this inbound text: replayed for a repeated MessageSid.
    answer: Mapped[str | None] = mapped_column(Text)
    # A revocation hint's review in the portal: "opted_out" or "dismissed".
    review: Mapped[str | None] = mapped_column(String(20))

    conversation: Mapped[Conversation] = relationship(back_populates="messages")

    @property
    def media(self) -> list[dict[str, str]]:
        return json.loads(self.media_json or "[]")


class Attestation(db.Model):
    """One append-only entry of the evidence log, hash-chained per conversation."""

    __tablename__ = "attestations"
    __table_args__ = (UniqueConstraint("conversation_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[RecordKind] = mapped_column(_enum(RecordKind))
    message_ref: Mapped[str | None] = mapped_column(String(32))
    direction: Mapped[Direction | None] = mapped_column(_enum(Direction))
    sender: Mapped[str | None] = mapped_column(String(255))
    recipient: Mapped[str | None] = mapped_column(String(255))
    body: Mapped[str | None] = mapped_column(Text)
    media_json: Mapped[str | None] = mapped_column(Text)
    twilio_sid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(24))
    error_code: Mapped[str | None] = mapped_column(String(16))
    event: Mapped[consent.Event | None] = mapped_column(_enum(consent.Event))
    mode: Mapped[consent.Mode | None] = mapped_column(_enum(consent.Mode))
    state: Mapped[consent.State | None] = mapped_column(_enum(consent.State))
    shown_text: Mapped[str | None] = mapped_column(Text)
    cause_sid: Mapped[str | None] = mapped_column(String(64))
    cause_body: Mapped[str | None] = mapped_column(Text)
    signature_valid: Mapped[bool | None] = mapped_column(Boolean)
    admin: Mapped[str | None] = mapped_column(String(255))
    method: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The Merkle log (bot/ledger.py): random bytes in the leaf, so a proof shows no
    # neighbour's content; the leaf's place, given once by the sequencer.
    salt: Mapped[str | None] = mapped_column(String(32))
    leaf_index: Mapped[int | None] = mapped_column(BigInteger)


Index("uq_attestations_leaf_index", Attestation.leaf_index, unique=True)
# The entries the sequencer has still to place in the tree: a short partial index.
Index(
    "ix_attestations_unsequenced",
    Attestation.id,
    sqlite_where=text("leaf_index IS NULL"),
    postgresql_where=text("leaf_index IS NULL"),
)


class TreeHead(db.Model):
    """The Merkle tree over every evidence entry: its size and root (one row)."""

    __tablename__ = "evidence_tree"

    id: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TreeNode(db.Model):
    """A complete subtree's hash: level 0 the leaves, level k the 2**k leaves from
    ``position * 2**k``. Proofs are made of these."""

    __tablename__ = "evidence_tree_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    position: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class CheckpointRecord(db.Model):
    """A signed checkpoint (C2SP tlog-checkpoint), as it was handed to the witnesses."""

    __tablename__ = "evidence_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    copies: Mapped[list["WitnessCopy"]] = relationship(
        back_populates="checkpoint", order_by="WitnessCopy.id"
    )


class VerifyRun(db.Model):
    """A run of ``audit verify`` (the dashboard warns when none passed for a day)."""

    __tablename__ = "evidence_verify_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ok: Mapped[bool] = mapped_column(Boolean)
    entries: Mapped[int] = mapped_column(BigInteger)
    problems: Mapped[int] = mapped_column(Integer)


class WitnessCopy(db.Model):
    """A checkpoint handed to one witness (a directory, a mail address), or still to be."""

    __tablename__ = "evidence_witness_copies"

    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("evidence_checkpoints.id"), index=True)
    witness: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    copy: Mapped[str | None] = mapped_column(Text)  # what was delivered (the mail, as sent)

    checkpoint: Mapped[CheckpointRecord] = relationship(back_populates="copies")


class Admin(Timestamps, db.Model):
    """A person who signs in to the portal."""

    __tablename__ = "admins"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))


class AdminSession(db.Model):
    """A signed-in browser; deleting the row signs it out wherever the cookie is."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # SHA-256 of the random token in the cookie: a leaked table opens no session.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    admin: Mapped[Admin] = relationship(lazy="joined")


class LoginAttempt(db.Model):
    """A sign-in attempt, kept in the database so throttling holds across workers and restarts."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_email_at", "email", "at"),
        Index("ix_login_attempts_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
