//! Outbox and inbox: sealing outgoing messages and opening incoming ones, each in one
//! transaction with the ratchet state it changes.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use tincan_proto::envelope::{Batch, BatchItem, Body, MAX_TEXT};
use tincan_proto::features;
use tincan_proto::ids::{MessageId, PeerId};
use tincan_proto::session::{self, PeerSession, SessionError};

use super::batches::next_batch;
use super::deferred::{self, Ack};
use super::session_cache::{self, Taken};
use super::{Home, invites, peers, prior, random16};
use crate::error::ClientError;

/// A sealed message waiting for the relay's acknowledgement.
#[derive(Clone)]
pub struct OutboxEntry {
    /// Local order.
    pub seq: i64,
    /// Recipient.
    pub peer: PeerId,
    /// Message id (of the first text, for a batch).
    pub id: MessageId,
    /// Sealed bytes.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("seq", &self.seq)
            .field("peer", &self.peer)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Rows just put in the outbox, all for one relay, in local order.
#[derive(Clone, Debug)]
pub struct Queued {
    /// The relay they go to.
    pub relay_url: String,
    /// The rows (one per sealed envelope: a batch carries several texts).
    pub entries: Vec<OutboxEntry>,
    /// The id of every text, in the order given.
    pub ids: Vec<MessageId>,
}

/// A delivery as it came from the relay.
pub struct Incoming {
    /// Relay sequence number.
    pub relay_seq: u64,
    /// Authenticated sender (as the relay says).
    pub from: PeerId,
    /// Message id (as the relay says).
    pub id: MessageId,
    /// Sealed bytes.
    pub body: Vec<u8>,
}

/// What kind of inbox entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxKind {
    /// A text message.
    Message,
    /// A peer accepted an invite.
    PeerJoined,
    /// A message that failed authentication or checks, kept as a report (no text).
    Rejected,
}

impl InboxKind {
    /// Stable name: `message`, `peer_joined`, `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::PeerJoined => "peer_joined",
            Self::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "message" => Self::Message,
            "peer_joined" => Self::PeerJoined,
            _ => Self::Rejected,
        }
    }
}

/// An inbox entry.
#[derive(Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Local order.
    pub seq: i64,
    /// Kind.
    pub kind: InboxKind,
    /// The peer.
    pub from: PeerId,
    /// Message id.
    pub id: MessageId,
    /// Text for messages; the reason for rejections.
    pub text: Option<String>,
    /// Sender's timestamp, unix ms (0 for rejections).
    pub sent_at: u64,
    /// When it arrived here, unix ms.
    pub received_at: u64,
}

impl std::fmt::Debug for InboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxEntry")
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .field("from", &self.from)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The outcome for one delivery; every outcome is acknowledged to the relay.
#[derive(Debug)]
pub enum Processed {
    /// Stored in the inbox.
    New(InboxEntry),
    /// A batch: each text not seen before, stored in the inbox in order.
    Batch(Vec<InboxEntry>),
    /// Seen before (a redelivery); nothing new.
    Duplicate,
}

impl Processed {
    /// The new inbox entries, in order (none for a duplicate).
    pub fn into_entries(self) -> Vec<InboxEntry> {
        match self {
            Self::New(e) => vec![e],
            Self::Batch(entries) => entries,
            Self::Duplicate => Vec::new(),
        }
    }
}

pub(super) fn push_outbox(
    tx: &Transaction<'_>,
    peer: &str,
    id: &MessageId,
    relay_url: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<i64, ClientError> {
    push_outbox_batch(tx, peer, id, &[], relay_url, body, now_ms)
}

/// Like [`push_outbox`] for a row carrying a batch: `members` are the ids of the texts after
/// the first (whose id is `id`).
fn push_outbox_batch(
    tx: &Transaction<'_>,
    peer: &str,
    id: &MessageId,
    members: &[MessageId],
    relay_url: &str,
    body: &[u8],
    now_ms: u64,
) -> Result<i64, ClientError> {
    let members: Option<Vec<u8>> =
        (!members.is_empty()).then(|| members.iter().flat_map(|m| *m.as_bytes()).collect());
    tx.prepare_cached(
        "INSERT INTO outbox (peer, msg_id, relay_url, body, created_at, members) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![peer, id.to_string(), relay_url, body, now_ms as i64, members])?;
    Ok(tx.last_insert_rowid())
}

/// A delivery's sender and message id, with their text forms as the tables store them.
struct Keys<'a> {
    from: &'a PeerId,
    id: &'a MessageId,
    from_text: String,
    id_text: String,
}

impl<'a> Keys<'a> {
    fn new(from: &'a PeerId, id: &'a MessageId) -> Self {
        Self {
            from,
            id,
            from_text: from.to_string(),
            id_text: id.to_string(),
        }
    }
}

/// Whether the inbox already holds this sender's message id.
fn seen_before(tx: &Transaction<'_>, keys: &Keys<'_>) -> Result<bool, ClientError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM inbox WHERE peer = ?1 AND msg_id = ?2")?
        .query_row(params![keys.from_text, keys.id_text], |_| Ok(()))
        .optional()?
        .is_some())
}

fn insert_inbox(
    tx: &Transaction<'_>,
    kind: InboxKind,
    keys: &Keys<'_>,
    text: Option<&str>,
    sent_at: u64,
    now_ms: u64,
) -> Result<InboxEntry, ClientError> {
    let (from, id) = (keys.from, keys.id);
    tx.prepare_cached(
        "INSERT INTO inbox (peer, msg_id, kind, text, sent_at, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![keys.from_text, keys.id_text, kind.as_str(), text, sent_at as i64, now_ms as i64])?;
    Ok(InboxEntry {
        seq: tx.last_insert_rowid(),
        kind,
        from: *from,
        id: *id,
        text: text.map(str::to_string),
        sent_at,
        received_at: now_ms,
    })
}

impl Home {
    /// Seals `texts` for `peer` and puts them in the outbox, in order, in one transaction.
    pub fn queue_texts(
        &mut self,
        peer: &PeerId,
        texts: &[&str],
        now_ms: u64,
    ) -> Result<Vec<MessageId>, ClientError> {
        Ok(self.queue(peer, texts, now_ms)?.ids)
    }

    /// Like [`Home::queue_texts`], returning the queued outbox rows themselves, so a connection
    /// can send them without reading them back.
    pub fn queue(
        &mut self,
        peer: &PeerId,
        texts: &[&str],
        now_ms: u64,
    ) -> Result<Queued, ClientError> {
        for t in texts {
            if t.len() > MAX_TEXT {
                return Err(ClientError::TooLong {
                    len: t.len(),
                    max: MAX_TEXT,
                });
            }
        }
        let me = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let carried = self.deferred.apply(&tx)?;
        let Taken {
            mut session,
            relay_url,
            features,
            ..
        } = self
            .sessions
            .take(&tx, &self.key, peer)?
            .ok_or_else(|| ClientError::UnknownPeer(peer.to_string()))?;
        let batches = features::has(features, features::BATCH);
        let peer_text = peer.to_string();
        let mut entries = Vec::new();
        let mut ids = Vec::with_capacity(texts.len());
        let mut rest = texts;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(next_batch(rest, batches));
            rest = later;
            let first = MessageId::from_bytes(random16());
            let more: Vec<BatchItem> = now[1..]
                .iter()
                .map(|t| BatchItem {
                    id: MessageId::from_bytes(random16()),
                    sent_at: now_ms,
                    text: (*t).to_string(),
                })
                .collect();
            let members: Vec<MessageId> = more.iter().map(|m| m.id).collect();
            let body = if more.is_empty() {
                Body::Text(now[0].to_string())
            } else {
                Body::Batch(Batch {
                    first: now[0].to_string(),
                    more,
                })
            };
            let body = session.seal(me, body, *first.as_bytes(), now_ms)?;
            let seq =
                push_outbox_batch(&tx, &peer_text, &first, &members, &relay_url, &body, now_ms)?;
            ids.push(first);
            ids.extend(members);
            entries.push(OutboxEntry {
                seq,
                peer: *peer,
                id: first,
                body,
            });
        }
        let rev = session_cache::save(&tx, &self.key, &session)?;
        tx.commit()?;
        self.sessions.put(rev, session);
        self.deferred.committed(carried);
        Ok(Queued {
            relay_url,
            entries,
            ids,
        })
    }

    /// Outbox entries for `relay_url` after local sequence `after`, oldest first.
    pub fn outbox(
        &self,
        relay_url: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, peer, msg_id, body FROM outbox WHERE relay_url = ?1 AND seq > ?2 AND failed_code IS NULL ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![relay_url, after, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, peer, id, body) = row?;
            if self.deferred.acked_row(seq) {
                continue;
            }
            if let (Ok(peer), Ok(id)) = (peer.parse(), id.parse()) {
                out.push(OutboxEntry {
                    seq,
                    peer,
                    id,
                    body,
                });
            }
        }
        Ok(out)
    }

    /// Number of messages not yet acknowledged by a relay (failed ones excluded).
    pub fn outbox_len(&self) -> Result<u64, ClientError> {
        let stored = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE failed_code IS NULL")?
            .query_row([], |r| r.get::<_, i64>(0))? as u64;
        // Rows acknowledged but not yet written as such are still stored.
        Ok(stored.saturating_sub(self.deferred.acks_pending() as u64))
    }

    /// Records relay acknowledgements, (local seq, relay seq) pairs, now (with anything deferred).
    pub fn outbox_acked(&mut self, acked: &[(i64, u64)], now_ms: u64) -> Result<(), ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let carried = self.deferred.apply(&tx)?;
        deferred::write_acks(&tx, acked.iter().map(|&(local, seq)| (local, seq, now_ms)))?;
        tx.commit()?;
        self.deferred.committed(carried);
        Ok(())
    }

    /// Like [`Home::outbox_acked`], but written with the next transaction this home runs anyway,
    /// or by [`Home::flush_deferred`]: `(local seq, relay seq, message id)`. Until then this
    /// home's [`Home::is_sent`], [`Home::outbox_len`] and [`Home::outbox`] already count them as
    /// sent; a crash before the write sends them again, which the relay and the recipient
    /// deduplicate by message id.
    pub fn outbox_acked_later(&mut self, acked: &[(i64, u64, MessageId)], now_ms: u64) {
        self.deferred
            .push_acks(acked.iter().map(|&(local, relay_seq, id)| Ack {
                local,
                relay_seq,
                id,
                at_ms: now_ms,
            }));
    }

    /// How many relay acknowledgements wait for a write.
    pub fn acks_pending(&self) -> usize {
        self.deferred.acks_pending()
    }

    /// Marks an outbox entry as refused by the relay; it stays in the outbox as a record.
    pub fn outbox_failed(&self, seq: i64, code: &str, message: &str) -> Result<(), ClientError> {
        self.conn.execute(
            "UPDATE outbox SET failed_code = ?2, failed_message = ?3 WHERE seq = ?1",
            params![seq, code, message],
        )?;
        Ok(())
    }

    /// Records that the relay deferred message `id` (a limit); it stays queued and is retried.
    pub fn outbox_deferred(
        &self,
        id: &MessageId,
        code: &str,
        message: &str,
        retry_after_ms: u32,
    ) -> Result<(), ClientError> {
        self.conn.execute(
            "INSERT INTO outbox_deferred (msg_id, code, message, retry_after_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (msg_id) DO UPDATE SET code = excluded.code, message = excluded.message,
             retry_after_ms = excluded.retry_after_ms",
            params![id.to_string(), code, message, i64::from(retry_after_ms)],
        )?;
        Ok(())
    }

    /// The last deferral of message `id` still waiting in the outbox: (code, message, retry ms).
    pub fn send_deferral(
        &self,
        id: &MessageId,
    ) -> Result<Option<(String, String, u32)>, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT d.code, d.message, d.retry_after_ms FROM outbox_deferred d JOIN outbox o ON o.msg_id = d.msg_id
                 WHERE d.msg_id = ?1",
                params![self.outbox_key(id)?],
                |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u32)),
            )
            .optional()?)
    }

    /// Whether the relay has acknowledged message `id`.
    pub fn is_sent(&self, id: &MessageId) -> Result<bool, ClientError> {
        if self.deferred.acked(id) {
            return Ok(true);
        }
        let sent = self
            .conn
            .query_row(
                "SELECT 1 FROM sent WHERE msg_id = ?1",
                params![id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if sent {
            return Ok(true);
        }
        // A later text of a batch whose acknowledgement is not written yet.
        if self.deferred.acks_pending() > 0
            && let Some((seq, _)) = self.batch_row(id)?
        {
            return Ok(self.deferred.acked_row(seq));
        }
        Ok(false)
    }

    /// The relay's refusal of message `id`, if it was refused.
    pub fn send_failure(&self, id: &MessageId) -> Result<Option<(String, String)>, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT failed_code, failed_message FROM outbox WHERE msg_id = ?1 AND failed_code IS NOT NULL",
                params![self.outbox_key(id)?],
                |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())),
            )
            .optional()?)
    }

    /// Opens a batch of deliveries in one transaction: decrypts, advances ratchets, stores inbox
    /// rows, all or nothing. The caller acknowledges every delivery to the relay after this
    /// returns `Ok`.
    pub fn process_incoming(
        &mut self,
        batch: &[Incoming],
        now_ms: u64,
    ) -> Result<Vec<Processed>, ClientError> {
        let key = self.key.clone();
        let Some(me) = self.identity.as_ref() else {
            return Err(ClientError::NoIdentity);
        };
        let me_id = me.peer_id();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Acks wait for the next send (deferred.rs).
        let carried = self.deferred.apply_mark(&tx)?;
        let mut sessions: HashMap<PeerId, PeerSession> = HashMap::new();
        // Peers whose re-pairing left a prior session (see `prior`).
        let mut priors: Vec<PeerId> = Vec::new();
        let mut dirty: Vec<PeerId> = Vec::new();
        // Sessions opened by a join in this batch, with the revision they were stored under.
        let mut joined: Vec<(PeerId, i64)> = Vec::new();
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let keys = Keys::new(&d.from, &d.id);
            if seen_before(&tx, &keys)? {
                out.push(Processed::Duplicate);
                continue;
            }
            if !sessions.contains_key(&d.from)
                && let Some(t) = self.sessions.take(&tx, &key, &d.from)?
            {
                if t.has_prior {
                    priors.push(d.from);
                }
                sessions.insert(d.from, t.session);
            }
            // A known peer's message opens with its session (or, right after a re-pairing, with
            // the one it replaced).
            let mut failure: Option<String> = None;
            let mut opened = None;
            if let Some(s) = sessions.get_mut(&d.from) {
                match s.open(me, d.from, &d.body) {
                    Ok(env) if env.id != d.id => {
                        failure = Some("message id does not match its sealed id".into())
                    }
                    Ok(env) => {
                        if !dirty.contains(&d.from) {
                            dirty.push(d.from);
                        }
                        // The peer has moved to this session: nothing sealed on the replaced
                        // one can follow (one sender's messages arrive in order).
                        if let Some(i) = priors.iter().position(|p| *p == d.from) {
                            priors.swap_remove(i);
                            prior::retire(&tx, &d.from)?;
                        }
                        opened = Some(env);
                    }
                    Err(e) => {
                        failure = Some(e.to_string());
                        // Sealed before the peer saw a re-pairing: the replaced session may
                        // open it.
                        if priors.contains(&d.from) {
                            opened =
                                prior::open(&tx, &key, me, d, now_ms)?.filter(|env| env.id == d.id);
                        }
                    }
                }
            }
            if let Some(env) = opened {
                let entry = match env.body {
                    Body::Text(t) => insert_inbox(
                        &tx,
                        InboxKind::Message,
                        &keys,
                        Some(&t),
                        env.sent_at,
                        now_ms,
                    )?,
                    Body::Batch(b) => {
                        let mut entries = vec![insert_inbox(
                            &tx,
                            InboxKind::Message,
                            &keys,
                            Some(&b.first),
                            env.sent_at,
                            now_ms,
                        )?];
                        for item in b.more {
                            // Each text is deduplicated by its own id (a peer could repeat one).
                            let keys = Keys::new(&d.from, &item.id);
                            if !seen_before(&tx, &keys)? {
                                entries.push(insert_inbox(
                                    &tx,
                                    InboxKind::Message,
                                    &keys,
                                    Some(&item.text),
                                    item.sent_at,
                                    now_ms,
                                )?);
                            }
                        }
                        out.push(Processed::Batch(entries));
                        continue;
                    }
                    // A repeated join on an open session carries nothing new.
                    Body::Join(_) => insert_inbox(
                        &tx,
                        InboxKind::Rejected,
                        &keys,
                        Some("duplicate join"),
                        0,
                        now_ms,
                    )?,
                };
                out.push(Processed::New(entry));
                continue;
            }
            // Otherwise (or if that failed) it may open a new session through an open invite.
            if let Some(otk) = session::session_start_key(&d.body)
                && let Some(pending) = invites::pending_by_otk(&tx, &otk, now_ms / 1000)?
            {
                let mut identity = invites::load_identity_tx(&tx, &key)?;
                match PeerSession::open_inbound(&mut identity, &pending, d.from, &d.body) {
                    Ok((s, env)) => {
                        let Body::Join(join) = &env.body else {
                            return Err(not_a_join());
                        };
                        tx.execute(
                            "UPDATE meta SET value = ?1 WHERE key = 'identity'",
                            params![identity.pickle(&key)],
                        )?;
                        let rev = peers::upsert_peer(
                            &tx,
                            &key,
                            &peers::Paired {
                                id: &d.from,
                                curve25519: &join.curve25519,
                                relay_url: &pending.relay_url,
                                features: join.features.unwrap_or(0),
                            },
                            &s,
                            now_ms / 1000,
                        )?;
                        invites::mark_used(&tx, &pending.id, &d.from)?;
                        let entry = insert_inbox(
                            &tx,
                            InboxKind::PeerJoined,
                            &keys,
                            None,
                            env.sent_at,
                            now_ms,
                        )?;
                        sessions.insert(d.from, s);
                        dirty.retain(|p| *p != d.from);
                        joined.push((d.from, rev));
                        out.push(Processed::New(entry));
                        continue;
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            let reason = failure.unwrap_or_else(|| {
                SessionError::NotInvited.to_string()
                    + " (sender is not a peer and holds no open invite)"
            });
            tracing::warn!(from = %d.from, reason = %reason, "rejected incoming message");
            let entry = insert_inbox(&tx, InboxKind::Rejected, &keys, Some(&reason), 0, now_ms)?;
            out.push(Processed::New(entry));
        }
        let mut saved = Vec::with_capacity(dirty.len() + joined.len());
        for p in dirty {
            if let Some(s) = sessions.get(&p) {
                saved.push((p, session_cache::save(&tx, &key, s)?));
            }
            tx.prepare_cached("UPDATE peers SET last_seen = ?1 WHERE id = ?2")?
                .execute(params![(now_ms / 1000) as i64, p.to_string()])?;
        }
        // A session saved again after its join in this batch keeps the later revision.
        saved.extend(joined);
        tx.commit()?;
        // Only sessions whose new state was just stored go back; the others are read again.
        for (p, rev) in saved {
            if let Some(s) = sessions.remove(&p) {
                self.sessions.put(rev, s);
            }
        }
        self.deferred.committed(carried);
        let _ = me_id;
        Ok(out)
    }

    /// Inbox entries not yet handed to the application, oldest first.
    pub fn unconsumed(&self, limit: usize) -> Result<Vec<InboxEntry>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, peer, msg_id, text, sent_at, received_at FROM inbox
             WHERE seq > COALESCE(
                 (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'consumed_through'), 0)
               AND consumed = 0
             ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, peer, id, text, sent_at, received_at) = row?;
            if let (Ok(from), Ok(id)) = (peer.parse(), id.parse()) {
                out.push(InboxEntry {
                    seq,
                    kind: InboxKind::parse(&kind),
                    from,
                    id,
                    text,
                    sent_at: sent_at as u64,
                    received_at: received_at as u64,
                });
            }
        }
        Ok(out)
    }

    /// Marks inbox entries up to and including `seq` as handed to the application.
    pub fn mark_consumed(&self, seq: i64) -> Result<(), ClientError> {
        deferred::write_consumed(&self.conn, seq)
    }

    /// Like [`Home::mark_consumed`], but written with the next transaction this home runs anyway
    /// (a delivery, a send, an acknowledgement) instead of one of its own, or by
    /// [`Home::flush_deferred`]. Until then a crash can show those entries again.
    pub fn mark_consumed_later(&mut self, seq: i64) {
        self.deferred.mark_consumed(seq);
    }

    /// Marks one inbox entry as dealt with (not the ones before it), written with the next
    /// transaction like [`Home::mark_consumed_later`]: for an application that finishes entries
    /// out of order. The watermark moves up to the oldest entry not yet dealt with.
    pub fn mark_handled_later(&mut self, seq: i64) {
        self.deferred.mark_handled(seq);
    }

    /// Whether a mark from [`Home::mark_consumed_later`] is still unwritten.
    pub fn consumed_pending(&self) -> bool {
        self.deferred.consumed_pending()
    }

    /// Writes everything left by [`Home::mark_consumed_later`] and [`Home::outbox_acked_later`].
    pub fn flush_deferred(&mut self) -> Result<(), ClientError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let carried = self.deferred.apply(&tx)?;
        tx.commit()?;
        self.deferred.committed(carried);
        Ok(())
    }
}

fn not_a_join() -> ClientError {
    // open_inbound only succeeds for a join body; this keeps the match total without a panic.
    ClientError::Session(SessionError::BadJoin("first message is not a join"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tincan_proto::ids::MessageId;

    use super::super::fixtures::{paired, take};
    use super::super::{InboxKind, Incoming, now_ms};

    /// The relay says which id a delivery carries; the sealed envelope says too. A relay that
    /// relabels a message (to make a later one look like a duplicate of it, or the other way
    /// round) gets a rejection, never the text under the wrong id.
    #[test]
    fn a_delivery_whose_id_differs_from_its_sealed_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        t.a.queue_texts(&t.b_id, &["relabelled"], now_ms()).unwrap();
        let row = take(&mut t.a).remove(0);
        let relabelled = Incoming {
            relay_seq: row.seq as u64,
            from: t.a_id,
            id: MessageId::from_bytes([0x5a; 16]),
            body: row.body.clone(),
        };
        let entries: Vec<_> =
            t.b.process_incoming(&[relabelled], now_ms())
                .unwrap()
                .into_iter()
                .flat_map(|p| p.into_entries())
                .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, InboxKind::Rejected);
        // A rejection keeps its reason, never the message's text.
        let reason = entries[0].text.as_deref().unwrap_or_default();
        assert!(reason.contains("does not match its sealed id"), "{reason}");
        assert!(!reason.contains("relabelled"));
    }
}
