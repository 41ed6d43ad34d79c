//! Key material at rest: issuer private keys and server secrets sealed under
//! an operator-supplied key-encryption key (KEK) with AES-256-GCM (aws-lc).
//!
//! A sealed value is `"BPK1" ‖ kek_id (8) ‖ nonce (12) ‖ ciphertext ‖ tag
//! (16)`, with the row it belongs to (`issuer_key:<id>`, `setting:<name>`)
//! as associated data, so a sealed value moved to another row does not open.
//! `kek_id` (a hash of the KEK) names the KEK a value needs, so a wrong or
//! missing KEK is reported as such instead of as corruption. Values without
//! the prefix are plaintext (stores written without a KEK, or before one was
//! configured); `blindpass keys rewrap` converts them. Once a KEK is
//! configured, a plaintext value is refused, never used: someone who can
//! write the database but has no KEK could otherwise plant a key of their
//! own and mint tokens that redeem.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use blindpass_entropy::Entropy;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Prefix of a sealed value.
const MAGIC: &[u8; 4] = b"BPK1";
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// The key-encryption key: 32 bytes. Redacted in `Debug`.
pub struct KeyEncryptionKey {
    key: LessSafeKey,
    id: [u8; ID_LEN],
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

/// Sealing and opening failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// The KEK is not 32 bytes (raw, hex or base64).
    #[error("a key-encryption key is 32 bytes, given as 64 hex digits or base64")]
    BadKey,
    /// The value is sealed but no KEK was given.
    #[error("the store holds keys encrypted under key-encryption key {0}: configure it (--key-encryption-key-file)")]
    Missing(String),
    /// The value is sealed under another KEK.
    #[error("the store holds keys encrypted under key-encryption key {stored}, not the configured {configured}")]
    WrongKey {
        /// The KEK the value needs.
        stored: String,
        /// The KEK given.
        configured: String,
    },
    /// The value is plaintext although a KEK is configured (stored before
    /// the KEK, or planted by someone without it): refused, never used.
    #[error(
        "{0} is stored unsealed although a key-encryption key is configured: refused (seal it with `blindpass keys rewrap --new-key-encryption-key-file` naming the configured KEK)"
    )]
    Unsealed(String),
    /// The value does not open: tampered, truncated or moved to another row.
    #[error("a sealed value of {0} does not authenticate (tampered or moved)")]
    Corrupt(String),
}

impl KeyEncryptionKey {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KekError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KekError::BadKey)?;
        let digest = Sha256::new_with_prefix(b"blindpass kek id\0").chain_update(bytes).finalize();
        let mut id = [0u8; ID_LEN];
        for (out, byte) in id.iter_mut().zip(digest.iter()) {
            *out = *byte;
        }
        Ok(Self { key: LessSafeKey::new(key), id })
    }

    /// A KEK from the text of a key file or variable: 64 hex digits or
    /// base64 of 32 bytes (surrounding whitespace ignored).
    pub fn from_text(text: &str) -> Result<Self, KekError> {
        let text = Zeroizing::new(text.trim().to_owned());
        let mut bytes = Zeroizing::new([0u8; 32]);
        if text.len() == 64 && hex::decode_to_slice(text.as_bytes(), &mut bytes[..]).is_ok() {
            return Self::from_bytes(&bytes[..]);
        }
        let decoded = blindpass_protocol::b64::decode_standard(&text)
            .or_else(|_| blindpass_protocol::b64::decode(&text))
            .map(Zeroizing::new)
            .map_err(|_| KekError::BadKey)?;
        if decoded.len() != 32 {
            return Err(KekError::BadKey);
        }
        Self::from_bytes(&decoded)
    }

    /// A fresh random KEK, as 64 hex digits (for `blindpass keys generate-kek`).
    pub fn generate_hex(entropy: &dyn Entropy) -> Zeroizing<String> {
        let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(entropy.bytes());
        Zeroizing::new(hex::encode(&bytes[..]))
    }

    /// The KEK's public id (hex): names it in errors and logs.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Seals `plaintext` for the row named `aad`, under a fresh random nonce.
    pub(crate) fn seal(&self, plaintext: &[u8], aad: &str, entropy: &dyn Entropy) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = entropy.bytes();
        let mut out = Vec::with_capacity(MAGIC.len() + ID_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plaintext.to_vec();
        // AES-GCM with a 96-bit random nonce: seal fails only for inputs
        // beyond 64 GiB, which a key or secret never is.
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad.as_bytes()),
            &mut body,
        );
        debug_assert!(sealed.is_ok());
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        out
    }
}

/// Whether `value` is sealed (rather than plaintext).
pub(crate) fn is_sealed(value: &[u8]) -> bool {
    value.len() >= MAGIC.len() + ID_LEN + NONCE_LEN + TAG_LEN && value.starts_with(MAGIC)
}

/// Opens `value` of the row `aad` with `kek`. Plaintext passes through only
/// when no KEK is configured ([`KekError::Unsealed`] otherwise).
pub fn open(kek: Option<&KeyEncryptionKey>, value: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, KekError> {
    if !is_sealed(value) && kek.is_some() {
        return Err(KekError::Unsealed(aad.to_owned()));
    }
    open_for_rewrap(kek, value, aad)
}

/// [`open`] for `keys rewrap`, which seals what is still plaintext: a
/// plaintext value passes through whatever the KEK.
pub(crate) fn open_for_rewrap(
    kek: Option<&KeyEncryptionKey>,
    value: &[u8],
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, KekError> {
    if !is_sealed(value) {
        return Ok(Zeroizing::new(value.to_vec()));
    }
    let (_, after_magic) = value.split_at(MAGIC.len());
    let (id, rest) = after_magic.split_at(ID_LEN);
    let stored = hex::encode(id);
    let Some(kek) = kek else { return Err(KekError::Missing(stored)) };
    if id != kek.id {
        return Err(KekError::WrongKey { stored, configured: kek.id() });
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KekError::Corrupt(aad.to_owned()))?;
    let mut body = Zeroizing::new(sealed.to_vec());
    let plain_len = kek
        .key
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
        .map_err(|_| KekError::Corrupt(aad.to_owned()))?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

/// The associated data of an issuer key's private key.
pub(crate) fn issuer_key_aad(id: &str) -> String {
    format!("issuer_key:{id}")
}

/// The associated data of a setting.
pub(crate) fn setting_aad(name: &str) -> String {
    format!("setting:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> KeyEncryptionKey {
        KeyEncryptionKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_kek_and_row() {
        let k = kek(1);
        let sealed = k.seal(b"private key", "issuer_key:a", &blindpass_entropy::SystemEntropy);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(&open(Some(&k), &sealed, "issuer_key:a").unwrap()[..], b"private key");
        assert_ne!(
            k.seal(b"private key", "issuer_key:a", &blindpass_entropy::SystemEntropy),
            sealed,
            "fresh nonce each time"
        );
        assert!(matches!(open(Some(&k), &sealed, "issuer_key:b"), Err(KekError::Corrupt(_))), "moved row");
        assert!(matches!(open(None, &sealed, "issuer_key:a"), Err(KekError::Missing(_))));
        assert!(matches!(open(Some(&kek(2)), &sealed, "issuer_key:a"), Err(KekError::WrongKey { .. })));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(open(Some(&k), &tampered, "issuer_key:a"), Err(KekError::Corrupt(_))));
        // Plaintext passes through without a KEK; with one it is refused
        // (only `keys rewrap`, which seals it, reads it).
        assert_eq!(&open(None, b"0\x82plain", "x").unwrap()[..], b"0\x82plain");
        assert_eq!(open(Some(&k), b"0\x82plain", "x").unwrap_err(), KekError::Unsealed("x".into()));
        assert_eq!(&open_for_rewrap(Some(&k), b"0\x82plain", "x").unwrap()[..], b"0\x82plain");
    }

    #[test]
    fn keks_parse_from_hex_or_base64_and_nothing_else() {
        let hex_text = "01".repeat(32);
        assert_eq!(KeyEncryptionKey::from_text(&format!(" {hex_text}\n")).unwrap().id(), kek(1).id());
        let b64 = blindpass_protocol::b64::encode_standard(&[1u8; 32]);
        assert_eq!(KeyEncryptionKey::from_text(&b64).unwrap().id(), kek(1).id());
        for bad in ["", "01", &"zz".repeat(32), &blindpass_protocol::b64::encode_standard(&[1u8; 16])] {
            assert_eq!(KeyEncryptionKey::from_text(bad).unwrap_err(), KekError::BadKey, "{bad:?}");
        }
        assert!(!format!("{:?}", kek(1)).contains("0101"), "redacted");
        assert_eq!(KeyEncryptionKey::generate_hex(&blindpass_entropy::SystemEntropy).len(), 64);
    }
}
