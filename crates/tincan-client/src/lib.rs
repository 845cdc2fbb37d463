//! The tincan client SDK.
//!
//! A [`Home`] holds an agent's identity and state in a directory (a key file and a SQLite
//! database). A [`Client`] connects a home to one relay: it authenticates, reconnects with
//! backoff, sends from a persisted outbox (a message queued while the relay is down goes out when
//! it returns) and yields received messages as [`Event`]s.
//!
//! Using it:
//! - Depend on it by path or git (`tincan-client = { path = "…/crates/tincan-client" }`); it is
//!   not on a registry. It needs a tokio runtime (`Client::start` and `Client::connect` spawn
//!   tasks, and panic outside one): add tokio with `macros` and `rt-multi-thread` (or `rt`) for
//!   `#[tokio::main]`.
//! - It talks to a running relay (`tincan relay`, or `tincan_relay::run` in process, as the
//!   hidden lines of the example below do).
//! - Transport: [`Client::start`] and [`Client::connect`] use the WebSocket, or the relay's HTTP
//!   API when `TINCAN_TRANSPORT=http` is set ([`Transport::from_env`]; an unknown value falls back
//!   to the WebSocket with a warning). [`Client::start_with`] chooses in code; follow it with
//!   [`Client::wait_connected`] as `connect` does. Both speak `https://` (system roots and
//!   `SSL_CERT_FILE`, plus the Mozilla roots). The HTTP transport does not tell two copies of one
//!   identity apart: with it, "the newest receiver wins" ([`Stopped::Replaced`]) does not hold.
//! - Ids, invites and error codes live in the protocol crate, re-exported as
//!   [`tincan_proto`]: `tincan_proto::ids::{PeerId, MessageId}`, `tincan_proto::invite::Invite`,
//!   `tincan_proto::frame::ErrorCode` (to match [`ClientError::Relay`]). This agent's own id is
//!   `client.home().identity()?.peer_id()`.
//! - An inviter can send to its new peer once it has seen that peer's [`Event::PeerJoined`]
//!   (before, the peer is unknown: [`ClientError::UnknownPeer`]).
//!
//! ```
//! use std::time::Duration;
//! use tincan_client::tincan_proto::invite::Invite;
//! use tincan_client::{Client, ClientOptions, Event, Home, now_secs};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let relay_url = format!("http://{}", listener.local_addr()?);
//! # let config = tincan_relay::Config::new(tmp.path().join("relay.db"));
//! # tokio::spawn(tincan_relay::run(listener, config, std::future::pending()));
//! let wait = Duration::from_secs(5);
//! // Two agents, each with its own home directory.
//! let mut alice_home = Home::open(&tmp.path().join("alice"))?;
//! alice_home.setup()?;
//! let mut bob_home = Home::open(&tmp.path().join("bob"))?;
//! bob_home.setup()?;
//! let mut alice = Client::connect(alice_home, &relay_url, ClientOptions::default(), wait).await?;
//! let bob = Client::connect(bob_home, &relay_url, ClientOptions::default(), wait).await?;
//!
//! // Alice invites; Bob accepts the URL she gave him.
//! let url = alice.create_invite(3600).await?.url();
//! let alice_peer = bob.accept_invite(&Invite::parse(&url, now_secs())?, wait).await?;
//!
//! // Bob writes; Alice's event stream shows him joining, then his message.
//! bob.send(&alice_peer.id.to_string(), "hello").await?;
//! while let Some(event) = alice.next_event().await {
//!     match event {
//!         Event::PeerJoined { peer, fingerprint } => println!("{peer} joined ({fingerprint})"),
//!         Event::Message(m) => {
//!             assert_eq!(m.text, "hello");
//!             break;
//!         }
//!         _ => {} // connection status, rejected deliveries, refused sends
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod conn;
pub mod display;
mod error;
pub mod home;
mod http_conn;
mod receiving;
mod tls;
pub use tls::{http_client, http_client_builder};

pub use client::{Client, ClientOptions, ConnState, Event, ReceivedMessage, Stopped, Transport};
pub use error::ClientError;
pub use home::{AgentMessage, AuditVerdict, Home, PeerPolicy, PeerRecord, now_ms, now_secs};
pub use tincan_proto;
