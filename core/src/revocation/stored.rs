//! Deny entries as the fleet stores them in etcd, under the fleet cache's
//! prefix: `<key_prefix>d/<name>`, where `name` is the hex HMAC-SHA-256 of
//! the subject or session under the fleet key (etcd never sees the key, so
//! whoever reads etcd cannot tell whose entries are there), and the value
//! `v1.<hex mac>.{"at":<s>,"until":<s>}` MACed over the etcd key and the
//! JSON with the same key. Any relay that holds the fleet key and may write
//! the prefix can write the same (README, "Revocations").

use serde_json::{json, Value};

use super::deny::{Denied, DenyKey};
use super::set::Target;
use crate::sealed;

/// What a deny entry's MAC covers besides the etcd key and the JSON.
const PURPOSE: &[u8] = b"oauth-pep deny entry v1\0";
/// An entry's value is never longer (the JSON of two numbers).
pub const MAX_VALUE_BYTES: usize = 256;

/// The full HMAC naming a target under `secret`; its first 16 bytes are the
/// deny set's key.
pub fn name(secret: &[u8], target: &Target) -> [u8; 32] {
    let (kind, iss, id) = match target {
        Target::Subject { iss, sub } => (b's', iss, sub),
        Target::Session { iss, sid } => (b'i', iss, sid),
    };
    mac_of(secret, kind, iss, id)
}

pub(super) fn mac_of(secret: &[u8], kind: u8, iss: &str, id: &str) -> [u8; 32] {
    let mut input = b"oauth-pep deny v1\0".to_vec();
    input.push(kind);
    input.extend_from_slice(&(iss.len() as u32).to_be_bytes());
    input.extend_from_slice(iss.as_bytes());
    input.extend_from_slice(id.as_bytes());
    hmac_sha256::HMAC::mac(&input, secret)
}

pub(super) fn key_of(name: &[u8; 32]) -> DenyKey {
    let mut key = [0u8; 16];
    key.copy_from_slice(name.get(..16).unwrap_or(&[0; 16]));
    key
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The etcd key and value of a revocation.
pub fn seal(secret: &[u8], prefix: &[u8], target: &Target, denied: Denied) -> (Vec<u8>, Vec<u8>) {
    let mut key = prefix.to_vec();
    key.extend_from_slice(sealed::hex(&name(secret, target)).as_bytes());
    let json = json!({"at": denied.at, "until": denied.until}).to_string();
    let value = sealed::seal(PURPOSE, secret, &key, &json);
    (key, value)
}

/// Why an entry read from etcd is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not under the prefix as `<64 hex>`, or a value that is not `v1.<mac>.<json>`.
    Malformed,
    /// Its MAC verifies with no fleet key: written by someone without it.
    Mac,
    /// Past its `until`.
    Expired,
}

impl Rejected {
    pub fn code(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::Mac => "bad_mac",
            Rejected::Expired => "expired",
        }
    }
}

/// An entry read from etcd: its deny key and revocation, if its MAC
/// verifies with one of `secrets`. `at` is never later than `now`, and
/// `until` never further than `retention` from now: a relay's clock or
/// mistake cannot refuse tokens not issued yet, nor keep an entry forever.
pub fn open(
    secrets: &[Vec<u8>],
    prefix: &[u8],
    etcd_key: &[u8],
    value: &[u8],
    retention: u64,
    now: u64,
) -> Result<(DenyKey, Denied), Rejected> {
    let name = etcd_key
        .strip_prefix(prefix)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(unhex)
        .and_then(|n| <[u8; 32]>::try_from(n).ok())
        .ok_or(Rejected::Malformed)?;
    let secrets = secrets.iter().map(Vec::as_slice);
    let json =
        sealed::open(PURPOSE, secrets, etcd_key, value, MAX_VALUE_BYTES).map_err(|refused| {
            match refused {
                sealed::Refused::Malformed => Rejected::Malformed,
                sealed::Refused::Mac => Rejected::Mac,
            }
        })?;
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return Err(Rejected::Malformed);
    };
    let time = |name: &str| fields.get(name).and_then(Value::as_u64);
    let (Some(at), Some(until)) = (time("at"), time("until")) else {
        return Err(Rejected::Malformed);
    };
    if until <= now {
        return Err(Rejected::Expired);
    }
    Ok((
        key_of(&name),
        Denied {
            at: at.min(now),
            until: until.min(now.saturating_add(retention)),
        },
    ))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const NOW: u64 = 1_700_000_000;
    const KEY: &[u8] = b"fleet-key-fleet-key-fleet-key-32";
    const OLD: &[u8] = b"previous-fleet-key-previous-key!";
    const PREFIX: &[u8] = b"/oauth-pep/d/";

    fn alice() -> Target {
        Target::Subject {
            iss: "https://idp.test".into(),
            sub: "alice".into(),
        }
    }

    #[test]
    fn an_entry_reads_back_under_its_subjects_key_and_never_names_it() {
        let denied = Denied {
            at: NOW - 5,
            until: NOW + 60,
        };
        let (key, value) = seal(KEY, PREFIX, &alice(), denied);
        let text =
            String::from_utf8(key.clone()).unwrap() + &String::from_utf8(value.clone()).unwrap();
        assert!(
            !text.contains("alice") && !text.contains("idp.test"),
            "{text}"
        );
        let secrets = [KEY.to_vec(), OLD.to_vec()];
        let (deny_key, read) = open(&secrets, PREFIX, &key, &value, 3600, NOW).unwrap();
        assert_eq!(read, denied);
        assert_eq!(deny_key, key_of(&name(KEY, &alice())));
        // Written with the previous key (an instance not rotated yet): read too.
        let (key, value) = seal(OLD, PREFIX, &alice(), denied);
        assert_eq!(
            open(&secrets, PREFIX, &key, &value, 3600, NOW).map(|(k, _)| k),
            Ok(key_of(&name(OLD, &alice())))
        );
    }

    #[test]
    fn what_a_writer_without_the_key_puts_there_is_rejected() {
        let denied = Denied {
            at: NOW,
            until: NOW + 60,
        };
        let secrets = [KEY.to_vec()];
        let (key, value) = seal(
            b"a-guessed-key-a-guessed-key-32by",
            PREFIX,
            &alice(),
            denied,
        );
        assert_eq!(
            open(&secrets, PREFIX, &key, &value, 3600, NOW),
            Err(Rejected::Mac)
        );
        // A good value moved under another name does not verify either.
        let (_, good) = seal(KEY, PREFIX, &alice(), denied);
        let other = Target::Subject {
            iss: "https://idp.test".into(),
            sub: "bob".into(),
        };
        let (bobs_key, _) = seal(KEY, PREFIX, &other, denied);
        assert_eq!(
            open(&secrets, PREFIX, &bobs_key, &good, 3600, NOW),
            Err(Rejected::Mac)
        );
        for (k, v) in [
            (b"/oauth-pep/d/xyz".to_vec(), good.clone()),
            (b"/elsewhere/00".to_vec(), good.clone()),
            (key.clone(), b"v1.zz".to_vec()),
            (key.clone(), vec![b'v'; 300]),
            (key.clone(), b"\xff\xfe".to_vec()),
        ] {
            assert_eq!(
                open(&secrets, PREFIX, &k, &v, 3600, NOW),
                Err(Rejected::Malformed)
            );
        }
    }

    #[test]
    fn times_are_bounded_by_now_and_retention() {
        let secrets = [KEY.to_vec()];
        let (key, value) = seal(
            KEY,
            PREFIX,
            &alice(),
            Denied {
                at: NOW + 500,
                until: NOW + 99_999,
            },
        );
        assert_eq!(
            open(&secrets, PREFIX, &key, &value, 3600, NOW).map(|(_, d)| d),
            Ok(Denied {
                at: NOW,
                until: NOW + 3600
            })
        );
        let (key, value) = seal(
            KEY,
            PREFIX,
            &alice(),
            Denied {
                at: NOW - 10,
                until: NOW,
            },
        );
        assert_eq!(
            open(&secrets, PREFIX, &key, &value, 3600, NOW),
            Err(Rejected::Expired)
        );
    }
}
