//! RSAES-OAEP (RFC 8017 §7.1) with SHA-256, MGF1-SHA-256 and an empty label:
//! how claim payloads are encrypted to a relay's `encryption-key-pem`.

use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::rsa::RsaPublicKey;

const H_LEN: usize = 32;

/// Encryption failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OaepError {
    /// The message is longer than `k - 2·hLen - 2` bytes.
    #[error("message too long for the key ({max} bytes at most)")]
    MessageTooLong {
        /// The largest message the key can take.
        max: usize,
    },
    /// Decoding failed (wrong key, or a tampered ciphertext).
    #[error("decryption error")]
    Decryption,
}

/// The largest message `pk` can encrypt.
pub fn max_message_len(pk: &RsaPublicKey) -> usize {
    pk.modulus_len().saturating_sub(2 * H_LEN + 2)
}

/// RSAES-OAEP-ENCRYPT(pk, msg) with the empty label.
pub fn encrypt(pk: &RsaPublicKey, msg: &[u8], rng: &mut impl CryptoRng) -> Result<Vec<u8>, OaepError> {
    let k = pk.modulus_len();
    let max = max_message_len(pk);
    if msg.len() > max {
        return Err(OaepError::MessageTooLong { max });
    }
    // EME-OAEP encoding: EM = 0x00 ‖ maskedSeed ‖ maskedDB.
    let mut em = Zeroizing::new(vec![0u8; k]);
    let (head, db) = em.split_at_mut(1 + H_LEN);
    let seed = head.get_mut(1..).ok_or(OaepError::Decryption)?;
    rng.fill_bytes(seed);
    // DB = lHash ‖ PS ‖ 0x01 ‖ M
    let l_hash = Sha256::digest([]);
    db.get_mut(..H_LEN).ok_or(OaepError::Decryption)?.copy_from_slice(&l_hash);
    let one_at = db.len() - msg.len() - 1;
    *db.get_mut(one_at).ok_or(OaepError::Decryption)? = 0x01;
    db.get_mut(one_at + 1..).ok_or(OaepError::Decryption)?.copy_from_slice(msg);
    mgf1_xor(seed, db);
    mgf1_xor(db, seed);
    // RSAEP: c = m^e mod n (m < n since its top byte is zero).
    let m = pk.uint_below_modulus(&em).ok_or(OaepError::Decryption)?;
    Ok(pk.to_fixed_bytes(&pk.public_op(&m)))
}

/// EME-OAEP decoding of `em` (the RSADP output, `k` bytes). For clients and
/// tests; blindpass itself only encrypts.
pub fn decode(em: &[u8]) -> Result<Vec<u8>, OaepError> {
    if em.len() < 2 * H_LEN + 2 {
        return Err(OaepError::Decryption);
    }
    let mut em = Zeroizing::new(em.to_vec());
    let (head, db) = em.split_at_mut(1 + H_LEN);
    let y = head.first().copied().unwrap_or(1);
    let seed = head.get_mut(1..).ok_or(OaepError::Decryption)?;
    mgf1_xor(db, seed);
    mgf1_xor(seed, db);
    let l_hash = Sha256::digest([]);
    let hash_ok = db.get(..H_LEN).is_some_and(|h| bool::from(h.ct_eq(&l_hash)));
    let rest = db.get(H_LEN..).unwrap_or_default();
    let one = rest.iter().position(|&b| b != 0);
    match one {
        Some(i) if hash_ok && y == 0 && rest.get(i) == Some(&1) => Ok(rest.get(i + 1..).unwrap_or_default().to_vec()),
        _ => Err(OaepError::Decryption),
    }
}

fn mgf1_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(H_LEN).enumerate() {
        let mut hasher = Sha256::new();
        hasher.update(seed);
        hasher.update((counter as u32).to_be_bytes());
        for (o, b) in chunk.iter_mut().zip(hasher.finalize().iter()) {
            *o ^= b;
        }
    }
}
