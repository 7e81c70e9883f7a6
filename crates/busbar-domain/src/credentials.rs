//! Per-service credentials for the built-in bus.
//!
//! One secret key per bus; each service's token is derived from it with HMAC-SHA256 over
//! the service's name. The bus holds only the key: it can check any token without a
//! list of issued tokens, so adding a service to the spec needs no new bus secret, and a
//! service can't forge another's token without the key. The token names its holder, so
//! the bus knows *who* is calling and applies the spec's `publishes` and `subscribes`.
//!
//! Token format: `<identity>.<64 hex digits>`. Identities are service names (lower-case
//! DNS labels) or [`ADMIN`], which cannot be a service name.
//!
//! The bus also presents a subscriber's own token when it pushes to that subscriber, so a
//! service can tell the bus from anyone else calling its `POST /events`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The identity for operators and tools: reads dead letters and subscriber state,
/// redrives, and may publish or replay any type.
pub const ADMIN: &str = "_admin";

/// Bytes in a bus key.
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a bus key is 64 hex digits; this one has {0} characters")]
    Length(usize),
    #[error("a bus key is hex digits (0-9, a-f) only")]
    NotHex,
}

/// The bus's secret key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct BusKey([u8; KEY_LEN]);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

impl BusKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        rand::fill(&mut k);
        BusKey(k)
    }

    /// Parses the hex form written by [`BusKey::to_hex`]; surrounding whitespace (a
    /// trailing newline in a file or Secret) is ignored.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != KEY_LEN * 2 {
            return Err(KeyError::Length(s.len()));
        }
        let mut k = [0u8; KEY_LEN];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| KeyError::NotHex)?;
            k[i] = u8::from_str_radix(hex, 16).map_err(|_| KeyError::NotHex)?;
        }
        Ok(BusKey(k))
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    fn mac(&self, identity: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"busbar token v1\0");
        mac.update(identity.as_bytes());
        mac
    }

    /// The token for `identity` (a service name or [`ADMIN`]).
    pub fn token(&self, identity: &str) -> String {
        format!("{identity}.{}", hex(&self.mac(identity).finalize().into_bytes()))
    }

    /// Who holds `token`, if this key issued it. Constant-time in the secret part.
    pub fn verify(&self, token: &str) -> Option<String> {
        let (identity, sig) = token.trim().rsplit_once('.')?;
        if identity.is_empty() || sig.len() != 64 {
            return None;
        }
        let mut raw = [0u8; 32];
        for (i, pair) in sig.as_bytes().chunks(2).enumerate() {
            raw[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        self.mac(identity).verify_slice(&raw).ok()?;
        Some(identity.to_owned())
    }
}

/// Whether `presented` equals `expected`, in time that does not depend on where they
/// differ (both are hashed first, so only hashes are compared byte by byte).
pub fn token_matches(presented: &str, expected: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

/// The bearer token of an `Authorization` header value, if it is one.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_holder_and_only_its_key_accepts_it() {
        let key = BusKey::generate();
        let t = key.token("comments");
        assert!(t.starts_with("comments."));
        assert_eq!(key.verify(&t).as_deref(), Some("comments"));
        assert_eq!(key.verify(&format!("{t}\n")).as_deref(), Some("comments"));
        assert_eq!(BusKey::generate().verify(&t), None, "another bus's key");
        // Renaming the holder or changing one digit breaks it.
        let sig = t.split_once('.').unwrap().1;
        assert_eq!(key.verify(&format!("posts.{sig}")), None);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.verify(std::str::from_utf8(&flipped).unwrap()), None);
        for junk in ["", ".", "comments", "comments.", "comments.zz", &format!(".{sig}"), &format!("a.{}", &sig[2..])] {
            assert_eq!(key.verify(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_hex_and_bad_keys_say_why() {
        let key = BusKey::generate();
        assert_eq!(BusKey::from_hex(&format!("{}\n", key.to_hex())).unwrap(), key);
        assert_eq!(BusKey::from_hex("abc"), Err(KeyError::Length(3)));
        assert_eq!(BusKey::from_hex(&"g".repeat(64)), Err(KeyError::NotHex));
        assert!(!format!("{key:?}").contains(&key.to_hex()[..8]));
        // Deterministic: the same key gives the same token (the operator relies on it).
        let again = BusKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.token(ADMIN), key.token(ADMIN));
    }

    #[test]
    fn bearer_headers_parse() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
        assert!(token_matches("a.b", "a.b") && !token_matches("a.b", "a.c"));
    }
}
