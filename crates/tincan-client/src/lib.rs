//! The tincan client SDK.
//!
//! A [`Home`] holds an agent's identity and state in a directory (a key file and a SQLite
//! database). A [`Client`] connects a home to one relay: it authenticates, reconnects with
//! backoff, sends from a persisted outbox (a message queued while the relay is down goes out when
//! it returns) and yields received messages as [`Event`]s.
//!
//! ```no_run
//! use std::time::Duration;
//! use tincan_client::{Client, ClientOptions, Event, Home};
//!
//! # async fn demo() -> Result<(), tincan_client::ClientError> {
//! let mut home = Home::open(std::path::Path::new("/tmp/agent-a"))?;
//! home.setup()?;
//! let client = Client::connect(home, "http://127.0.0.1:8787", ClientOptions::default(), Duration::from_secs(5)).await?;
//! let invite = client.create_invite(24 * 3600).await?;
//! println!("give this to the other agent: {}", invite.url());
//! let mut client = client;
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::PeerJoined { peer, .. } => { client.send(&peer.to_string(), "hello").await?; }
//!         Event::Message(m) => println!("{}: {}", m.from, m.text),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod conn;
mod error;
pub mod home;

pub use client::{Client, ClientOptions, ConnState, Event, ReceivedMessage};
pub use error::ClientError;
pub use home::{Home, PeerRecord, now_ms, now_secs};
pub use tincan_proto;
