//! tincan as an MCP server: a thin adapter over [`tincan_client`].
//!
//! Tools (`send_message`, `check_messages`, `list_peers`, `create_invite`, `accept_invite`,
//! `whoami`) and live push: each incoming message is sent to the MCP client as a
//! `notifications/claude/channel` notification (`{content, meta}`, declared by the experimental
//! capability `claude/channel`), and is still returned once by `check_messages`.
//!
//! Every message shown to the agent is framed as untrusted content from a named peer
//! ([`framing`]); pushes are rate limited per peer ([`flood`]); the peer policy (block, allow,
//! allowlist-only) is enforced by the client; receipts, pushes and checks go to the home's
//! hash-chained audit log. [`install`] writes MCP client configurations.

pub mod error;
pub mod flood;
pub mod framing;
pub mod hub;
pub mod install;
mod named;
pub mod serve;
pub mod server;
mod stdio;

pub use error::{InstallError, McpError};
pub use flood::PushLimit;
pub use hub::{CHANNEL_METHOD, Hub, HubConfig};
pub use serve::{http_addr, serve_http, serve_stdio};
pub use server::TincanMcp;
