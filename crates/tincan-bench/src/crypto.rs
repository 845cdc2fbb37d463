//! The Olm costs under the 1:1 line, alone: vodozemac in this process, no store, no network.
//!
//! It separates what a seal costs from what the rest of the pipeline adds, and in particular
//! the Curve25519 public-key derivation vodozemac repeats inside every `encrypt` (the sending
//! ratchet's public key is recomputed from its secret for each message key), so a pass on the
//! throughput path can tell what is tincan's and what is the library's.

use std::time::Instant;

use anyhow::{Context, Result};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use vodozemac::{Curve25519PublicKey, Curve25519SecretKey};

use crate::report::{Figure, Outcome};

/// Timed operations per figure (each after a tenth as many untimed).
const N: usize = 2000;
/// About the padded size of a 1 KiB text's envelope.
const PLAINTEXT: usize = 1100;

/// Two sessions that have exchanged one message each way (both ratchets active).
fn pair() -> Result<(Session, Session)> {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob
        .one_time_keys()
        .values()
        .next()
        .context("no one-time key")?;
    let mut a =
        alice.create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)?;
    let OlmMessage::PreKey(first) = a.encrypt("hello")? else {
        anyhow::bail!("the first message is not a pre-key message");
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &first)?
        .session;
    let reply = b.encrypt("hi")?;
    a.decrypt(&reply)?;
    Ok((a, b))
}

/// Mean microseconds per call of `f` over `n` calls, after `n / 10` untimed ones.
fn per_call(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..n / 10 {
        f()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

pub fn run() -> Result<Outcome> {
    let (mut a, _) = pair()?;
    let text = vec![b'x'; PLAINTEXT];
    let encrypt = per_call(N, || {
        a.encrypt(&text)?;
        Ok(())
    })?;
    // Decrypting needs messages in order and within Olm's gap limit: a fresh pair, a fresh run.
    let (mut a, mut b) = pair()?;
    let sealed: Vec<OlmMessage> = (0..N + N / 10)
        .map(|_| a.encrypt(&text))
        .collect::<Result<_, _>>()?;
    let mut next = sealed.iter();
    let decrypt = per_call(N, || {
        b.decrypt(next.next().context("ran out of messages")?)?;
        Ok(())
    })?;
    let secret = Curve25519SecretKey::new();
    let public_key = per_call(N, || {
        std::hint::black_box(Curve25519PublicKey::from(&secret));
        Ok(())
    })?;
    let ping_pong = per_call(N / 4, || {
        let m = a.encrypt("ping")?;
        b.decrypt(&m)?;
        let r = b.encrypt("pong")?;
        a.decrypt(&r)?;
        Ok(())
    })?;
    let key = [7u8; 32];
    let pickle = per_call(N, || {
        std::hint::black_box(a.pickle().encrypt(&key));
        Ok(())
    })?;
    let pickled = a.pickle().encrypt(&key);
    let unpickle = per_call(N, || {
        std::hint::black_box(vodozemac::olm::SessionPickle::from_encrypted(
            &pickled, &key,
        )?);
        Ok(())
    })?;
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new("encrypt_us", "Olm encrypt, 1,100 B", encrypt, "us"),
            Figure::new("decrypt_us", "Olm decrypt, 1,100 B", decrypt, "us"),
            Figure::new(
                "public_key_us",
                "Curve25519 public key from its secret",
                public_key,
                "us",
            ),
            Figure::new(
                "ping_pong_us",
                "ping-pong turn (2 encrypts, 2 decrypts, 2 ratchet steps)",
                ping_pong,
                "us",
            ),
            Figure::new("pickle_us", "session pickle (encrypted)", pickle, "us"),
            Figure::new("unpickle_us", "session unpickle", unpickle, "us"),
        ],
        notes: vec![format!(
            "vodozemac in-process, {N} calls each after {} untimed; an encrypt derives the sending ratchet's public key from its secret every time, so encrypt minus that derivation is the symmetric part ({:.1} us here)",
            N / 10,
            (encrypt - public_key).max(0.0)
        )],
    })
}
