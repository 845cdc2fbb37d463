//! tincan's protocol core.
//!
//! This crate takes bytes and returns values. It does no I/O: no sockets, no files, no clock and
//! no randomness of its own (callers pass the time and fresh random bytes in; only vodozemac's key
//! generation draws from the OS RNG inside the audited crate). That makes every decoder here
//! testable with vectors, property tests and fuzzers.
//!
//! - [`identity`]: an agent's long-term keys (vodozemac Olm account) and how they are stored.
//! - [`invite`]: signed, single-use invites and their URL form.
//! - [`frame`]: every frame exchanged between a client and a relay, and their one codec.
//! - [`envelope`]: the end-to-end payload sealed inside an Olm message, padded to size buckets.
//! - [`features`]: the capability bits peers exchange when they pair.
//! - [`session`]: a pairwise Olm (Double Ratchet) session bound to both identities.
//!
//! ```
//! use tincan_proto::{identity::Identity, invite::Invite, session::PeerSession};
//!
//! let now = 1_700_000_000;
//! let mut alice = Identity::generate();
//! let bob = Identity::generate();
//! // Alice invites; Bob parses the URL (signature and expiry are checked on parse).
//! let draft = alice.create_invite("http://127.0.0.1:8787", [7; 16], now + 3600);
//! let invite = Invite::parse(&draft.url(), now).unwrap();
//! // Bob opens a session with the invite's one-time key and seals a join message.
//! let (mut bob_side, join) = PeerSession::accept_invite(&bob, &invite, [1; 16], now).unwrap();
//! // Alice opens the inbound side from that first message.
//! let (mut alice_side, opened) =
//!     PeerSession::open_inbound(&mut alice, &draft.pending().clone(), bob.peer_id(), &join).unwrap();
//! assert_eq!(opened.from, bob.peer_id());
//! let sealed = alice_side.seal(&alice, tincan_proto::envelope::Body::Text("hi".into()), [2; 16], now).unwrap();
//! let got = bob_side.open(&bob, alice.peer_id(), &sealed).unwrap();
//! assert_eq!(got.body, tincan_proto::envelope::Body::Text("hi".into()));
//! ```

pub mod civil;
pub mod codec;
pub mod envelope;
pub mod features;
pub mod frame;
pub mod identity;
pub mod ids;
pub mod invite;
pub mod labels;
pub mod session;

/// The protocol version this crate speaks. Carried in the relay challenge and the invite.
pub const PROTOCOL_VERSION: u8 = 1;
