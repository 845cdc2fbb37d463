//! `tincan version`.

use serde_json::json;

use crate::output::Out;

pub fn run(out: &Out) {
    let v = env!("CARGO_PKG_VERSION");
    let p = tincan_client::tincan_proto::PROTOCOL_VERSION;
    out.print(json!({"version": v, "protocol": p}), || {
        format!("tincan {v} (protocol {p})")
    });
}
