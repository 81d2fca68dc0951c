"""Release bundles, their signed approvals and their promotions to an environment (cgthub.release).

A bundle's id is the SHA-256 of its manifest (every file's path and SHA-256), so the row, the
bundle folder under var/releases/ and a signature all name the same content. The manifest is kept
here too: a hub checks its live files against the database, even when the folder was lost.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cgthub.tables import Base, BigId


class ReleaseBundle(Base):
    """One built bundle: what it holds (manifest) and what changed since the bundle it was compared with."""

    __tablename__ = "release_bundles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the manifest
    built_at: Mapped[datetime]
    built_by: Mapped[str] = mapped_column(String(100))
    file_count: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[str] = mapped_column(Text)  # canonical JSON: {"files": {path: sha256}}
    compared_with: Mapped[str | None] = mapped_column(String(64))  # the bundle its notes compare against
    notes: Mapped[str] = mapped_column(Text)  # release notes, JSON


class ReleaseApproval(Base):
    """An electronic signature over a bundle id: signer re-authenticated, meaning, reason."""

    __tablename__ = "release_approvals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("release_bundles.id"), index=True)
    signer: Mapped[str] = mapped_column(String(64))
    meaning: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str] = mapped_column(String(40))
    reason_text: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime]
    signature_hash: Mapped[str] = mapped_column(String(64))  # binds signer, meaning, reason and bundle


class ReleasePromotion(Base):
    """A bundle put in force in an environment (promoted, or returned to by a rollback)."""

    __tablename__ = "release_promotions"
    __table_args__ = (Index("ix_release_promotions_environment", "environment", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("release_bundles.id"))
    environment: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # promoted | rolled_back
    by: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    replaced_id: Mapped[str | None] = mapped_column(String(64))  # the bundle in force before
    note: Mapped[str] = mapped_column(Text, default="")
