//! Test fixtures: two homes paired offline, and a "relay" that moves outbox rows by hand.

#![allow(clippy::unwrap_used)]

use tincan_proto::ids::PeerId;
use tincan_proto::invite::Invite;

use super::{Home, InboxKind, Incoming, OutboxEntry, Processed, now_ms, now_secs};

/// The relay URL the homes record; nothing listens there.
pub const RELAY: &str = "http://127.0.0.1:1";

/// Two homes and their ids.
pub struct Two {
    pub a: Home,
    pub b: Home,
    pub a_id: PeerId,
    pub b_id: PeerId,
}

/// A and B set up, B has accepted an invite from A; its join is still in B's outbox.
pub fn accepted(dir: &std::path::Path) -> Two {
    let mut a = Home::open(&dir.join("a")).unwrap();
    let mut b = Home::open(&dir.join("b")).unwrap();
    a.setup().unwrap();
    b.setup().unwrap();
    let (a_id, b_id) = (
        a.identity().unwrap().peer_id(),
        b.identity().unwrap().peer_id(),
    );
    let mut t = Two { a, b, a_id, b_id };
    accept(&mut t);
    t
}

/// A and B paired: B accepted an invite from A, and A opened the join.
pub fn paired(dir: &std::path::Path) -> Two {
    let mut t = accepted(dir);
    let join = take(&mut t.b);
    assert_eq!(kinds(&mut t.a, t.b_id, &join), [InboxKind::PeerJoined]);
    t
}

/// B accepts a (further) invite from A; the join stays in B's outbox.
pub fn accept(t: &mut Two) {
    let draft = t.a.create_invite(RELAY, 60, now_secs()).unwrap();
    let invite = Invite::parse(&draft.url(), now_secs()).unwrap();
    t.b.accept_invite(&invite, now_ms()).unwrap();
}

/// Everything in `from`'s outbox, acknowledged as if the relay took it.
pub fn take(from: &mut Home) -> Vec<OutboxEntry> {
    let rows = from.outbox(RELAY, 0, 100).unwrap();
    let acked: Vec<(i64, u64)> = rows.iter().map(|r| (r.seq, r.seq as u64)).collect();
    from.outbox_acked(&acked, now_ms()).unwrap();
    rows
}

/// Delivers `rows` from `from_id` to `to`; returns the kind of each new inbox entry (a
/// duplicate fails the test).
pub fn kinds(to: &mut Home, from_id: PeerId, rows: &[OutboxEntry]) -> Vec<InboxKind> {
    let batch: Vec<Incoming> = rows
        .iter()
        .map(|r| Incoming {
            relay_seq: r.seq as u64,
            from: from_id,
            id: r.id,
            body: r.body.clone(),
        })
        .collect();
    to.process_incoming(&batch, now_ms())
        .unwrap()
        .into_iter()
        .flat_map(|p| match p {
            Processed::Duplicate => panic!("duplicate"),
            p => p.into_entries().into_iter().map(|e| e.kind),
        })
        .collect()
}
