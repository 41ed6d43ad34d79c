//! EMSA-PSS (RFC 8017 §9.1) with SHA-384 and MGF1-SHA-384, the encoding
//! under RFC 9474's blind signatures (`blind_rsa` uses it and re-exports the
//! two public functions).

use sha2::{Digest, Sha384};
use subtle::ConstantTimeEq;

/// SHA-384 output length (`hLen`).
pub(crate) const HASH_LEN: usize = 48;

/// MGF1 with SHA-384 (RFC 8017 §B.2.1), XORed into `out`.
fn mgf1_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(HASH_LEN).enumerate() {
        let mut hasher = Sha384::new();
        hasher.update(seed);
        hasher.update((counter as u32).to_be_bytes());
        let block = hasher.finalize();
        for (o, b) in chunk.iter_mut().zip(block.iter()) {
            *o ^= b;
        }
    }
}

/// `H(0x00*8 ‖ mHash ‖ salt)`.
fn pss_h(m_hash: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    let mut hasher = Sha384::new();
    hasher.update([0u8; 8]);
    hasher.update(m_hash);
    hasher.update(salt);
    hasher.finalize().into()
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with SHA-384 and MGF1-SHA-384.
/// Returns `emLen = ceil(em_bits / 8)` bytes, or `None` ("encoding error").
pub fn emsa_pss_encode(msg: &[u8], em_bits: u32, salt: &[u8]) -> Option<Vec<u8>> {
    let em_len = (em_bits as usize).div_ceil(8);
    let s_len = salt.len();
    // 2-3. mHash = Hash(M); emLen >= hLen + sLen + 2.
    let m_hash = Sha384::digest(msg);
    if em_len < HASH_LEN + s_len + 2 {
        return None;
    }
    // 5-6. H = Hash(0^8 ‖ mHash ‖ salt).
    let h = pss_h(&m_hash, salt);
    // 7-8. DB = PS ‖ 0x01 ‖ salt.
    let db_len = em_len - HASH_LEN - 1;
    let mut em = vec![0u8; em_len];
    let (db, tail) = em.split_at_mut(db_len);
    let one_at = db_len - s_len - 1;
    *db.get_mut(one_at)? = 0x01;
    db.get_mut(one_at + 1..)?.copy_from_slice(salt);
    // 9-10. maskedDB = DB xor MGF(H, emLen - hLen - 1).
    mgf1_xor(&h, db);
    // 11. Clear the leftmost 8*emLen - emBits bits.
    let clear_bits = (em_len * 8) as u32 - em_bits;
    *db.first_mut()? &= 0xffu8 >> clear_bits;
    // 12. EM = maskedDB ‖ H ‖ 0xbc.
    tail.get_mut(..HASH_LEN)?.copy_from_slice(&h);
    *tail.last_mut()? = 0xbc;
    Some(em)
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with SHA-384, MGF1-SHA-384 and an exact
/// salt length `s_len`.
pub fn emsa_pss_verify(msg: &[u8], em: &[u8], em_bits: u32, s_len: usize) -> bool {
    let em_len = (em_bits as usize).div_ceil(8);
    let m_hash = Sha384::digest(msg);
    // 3. emLen >= hLen + sLen + 2; 4. rightmost octet is 0xbc.
    if em.len() != em_len || em_len < HASH_LEN + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    // 5. maskedDB ‖ H.
    let db_len = em_len - HASH_LEN - 1;
    let (masked_db, rest) = em.split_at(db_len);
    let Some(h) = rest.get(..HASH_LEN) else {
        return false;
    };
    // 6. The leftmost 8*emLen - emBits bits of maskedDB must be zero.
    let clear_bits = (em_len * 8) as u32 - em_bits;
    let top_mask = !(0xffu8 >> clear_bits);
    if masked_db.first().is_none_or(|b| b & top_mask != 0) {
        return false;
    }
    // 7-9. DB = maskedDB xor MGF(H); clear the top bits.
    let mut db = masked_db.to_vec();
    mgf1_xor(h, &mut db);
    if let Some(first) = db.first_mut() {
        *first &= 0xffu8 >> clear_bits;
    }
    // 10. PS must be zeros followed by 0x01 at exactly emLen - hLen - sLen - 2.
    let one_at = em_len - HASH_LEN - s_len - 2;
    let (ps, rest) = db.split_at(one_at);
    if ps.iter().any(|&b| b != 0) || rest.first() != Some(&0x01) {
        return false;
    }
    // 11-14. salt = last sLen octets of DB; H' == H.
    let salt = rest.get(1..).unwrap_or_default();
    let h_prime = pss_h(&m_hash, salt);
    bool::from(h_prime.ct_eq(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_encode_verify_round_trip_with_each_salt_length() {
        for (em_bits, salt_len) in [(2047, 48), (2047, 0), (4095, 48), (2046, 48)] {
            let salt = vec![0x5a; salt_len];
            let em = emsa_pss_encode(b"hello", em_bits, &salt).unwrap();
            assert!(emsa_pss_verify(b"hello", &em, em_bits, salt_len));
            assert!(!emsa_pss_verify(b"hellO", &em, em_bits, salt_len));
            // The exact salt length is enforced (the CIRCL "auto-detect" bug).
            let other = if salt_len == 0 { 48 } else { 0 };
            assert!(!emsa_pss_verify(b"hello", &em, em_bits, other));
        }
    }

    #[test]
    fn pss_encode_refuses_tiny_modulus() {
        assert_eq!(emsa_pss_encode(b"x", 8 * 90, &[0; 48]), None);
    }
}
