//! Digests and the InputBundleHash.
//!
//! Every digest in mkt is BLAKE3-256, printed as 64 lower-case hex digits.
//!
//! The **InputBundleHash** names a target's result in the store. It is the
//! BLAKE3 of the canonical JSON serialisation of [`BundleEncoding`]:
//!
//! ```json
//! {"encoding":"mkt.input-bundle.v1","prompt":"<digest of the compiled prompt>",
//!  "provider":"command","params":{"command":["cat"]}}
//! ```
//!
//! - `prompt` is the digest of the compiled prompt's canonical JSON (see
//!   [`crate::template::CompiledPrompt::canonical_json`]); the prompt holds
//!   the template, partials, verbatim files, inputs and upstream outputs as
//!   they were rendered, so all of those are covered.
//! - `params` holds every model parameter that changes the output (sorted
//!   keys); `latency_ms`, `timeout_s` and other settings that only change how
//!   a model is run are left out (see `ModelConfig::hashed_params`).
//! - Never hashed: the target's name, its output path, the model's name in
//!   `prompts.toml` (a label), secrets, timing. Renaming a target or moving
//!   its output reuses the stored result.
//!
//! Field order is that of the struct and maps are sorted, so the bytes are
//! canonical; the golden test below pins them. Bump `encoding` whenever they
//! would change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const BUNDLE_ENCODING: &str = "mkt.input-bundle.v1";

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// [`Digest::of`] on every core: for a multi-megabyte file a build
    /// writes while nothing else runs (the no-op stamp, at its end). The
    /// same digest; below a megabyte, the same one-thread hash.
    pub fn of_large(bytes: &[u8]) -> Digest {
        if bytes.len() < 1 << 20 {
            return Digest::of(bytes);
        }
        Digest(
            *blake3::Hasher::new()
                .update_rayon(bytes)
                .finalize()
                .as_bytes(),
        )
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
            s.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
        }
        s
    }

    /// The first 12 hex digits, for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    pub fn from_hex(s: &str) -> Option<Digest> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        let bytes = s.as_bytes();
        for (i, o) in out.iter_mut().enumerate() {
            let hi = (bytes[2 * i] as char).to_digit(16)?;
            let lo = (bytes[2 * i + 1] as char).to_digit(16)?;
            if bytes[2 * i].is_ascii_uppercase() || bytes[2 * i + 1].is_ascii_uppercase() {
                return None;
            }
            *o = (hi * 16 + lo) as u8;
        }
        Some(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected a 64-digit hex BLAKE3 digest"))
    }
}

/// The name of a target's result in the store; see the module docs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InputBundleHash(pub Digest);

impl fmt::Display for InputBundleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the InputBundleHash is computed over (module docs).
#[derive(Serialize)]
pub struct BundleEncoding<'a> {
    pub encoding: &'static str,
    pub prompt: Digest,
    pub provider: &'a str,
    pub params: &'a BTreeMap<String, serde_json::Value>,
}

impl InputBundleHash {
    pub fn compute(
        prompt: Digest,
        provider: &str,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> InputBundleHash {
        let enc = BundleEncoding {
            encoding: BUNDLE_ENCODING,
            prompt,
            provider,
            params,
        };
        let bytes = serde_json::to_vec(&enc).expect("serialising a plain struct cannot fail");
        InputBundleHash(Digest::of(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_input() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"G".repeat(64)), None);
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), None);
        assert_eq!(d.short().len(), 12);
    }

    /// Golden vector: if this fails, the store's names changed. Bump
    /// `BUNDLE_ENCODING` and update README's "Hash encoding" section.
    #[test]
    fn input_bundle_hash_golden_vector() {
        let prompt = Digest::of(br#"{"messages":[{"role":"user","content":"Hello\n"}]}"#);
        let mut params = BTreeMap::new();
        params.insert("command".to_string(), serde_json::json!(["cat"]));
        params.insert("stdin".to_string(), serde_json::json!("text"));
        let enc = BundleEncoding {
            encoding: BUNDLE_ENCODING,
            prompt,
            provider: "command",
            params: &params,
        };
        let bytes = String::from_utf8(serde_json::to_vec(&enc).unwrap()).unwrap();
        assert_eq!(
            bytes,
            format!(
                r#"{{"encoding":"mkt.input-bundle.v1","prompt":"{}","provider":"command","params":{{"command":["cat"],"stdin":"text"}}}}"#,
                prompt.to_hex()
            )
        );
        let h = InputBundleHash::compute(prompt, "command", &params);
        assert_eq!(h.to_string(), GOLDEN);
    }

    const GOLDEN: &str = "6ec46324505b1a8832a23d19e19bd2129548e4c2438182abb4a5991bbcbb6838";
}
