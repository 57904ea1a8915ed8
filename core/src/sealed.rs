//! The envelope of every value the fleet writes to etcd (introspection
//! answers, deny entries): `v1.<hex tag>.<json>`, the tag an HMAC-SHA-256
//! under the fleet key over a purpose, the etcd key and the JSON. Binding the
//! etcd key means a value copied under another key does not verify; the
//! purpose keeps one kind of value from passing for another.

const VERSION: &str = "v1";

/// Why a stored value was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over `max_bytes`, not UTF-8, or not `v1.<tag>.<json>`.
    Malformed,
    /// Its tag verifies with none of the keys.
    Mac,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tag(purpose: &[u8], secret: &[u8], etcd_key: &[u8], json: &str) -> String {
    let mut input = purpose.to_vec();
    input.extend_from_slice(etcd_key);
    input.push(0);
    input.extend_from_slice(json.as_bytes());
    hex(&hmac_sha256::HMAC::mac(&input, secret))
}

/// The value to write at `etcd_key`.
pub fn seal(purpose: &[u8], secret: &[u8], etcd_key: &[u8], json: &str) -> Vec<u8> {
    format!("{VERSION}.{}.{json}", tag(purpose, secret, etcd_key, json)).into_bytes()
}

/// The JSON of `value`, if its tag verifies with one of `secrets`.
pub fn open<'a, 's>(
    purpose: &[u8],
    secrets: impl IntoIterator<Item = &'s [u8]>,
    etcd_key: &[u8],
    value: &'a [u8],
    max_bytes: usize,
) -> Result<&'a str, Refused> {
    if value.len() > max_bytes {
        return Err(Refused::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| Refused::Malformed)?;
    let (given, json) = text
        .strip_prefix(VERSION)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.split_once('.'))
        .ok_or(Refused::Malformed)?;
    let verifies = secrets.into_iter().any(|secret| {
        let expected = tag(purpose, secret, etcd_key, json);
        // Constant time over the hex digits.
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if verifies {
        Ok(json)
    } else {
        Err(Refused::Mac)
    }
}
