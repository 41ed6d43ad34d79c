//! Where a type-2 key's private half is kept, as the store's private-key
//! column says (sealed under the key-encryption key like any key material):
//!
//! - in software: the PKCS#8 DER of the aws-lc key (a DER SEQUENCE, `0x30`);
//! - in a PKCS#11 token: a JSON reference (`{`) naming the token object
//!   (CKA_ID, CKA_LABEL) and holding the public key, so that the key ring,
//!   the directory and redemption need no token. It holds no private bytes.
//!
//! Types 1 and 5 (VOPRF) are always software keys.

use std::sync::Arc;

use blindpass_hsm::{Hsm, ObjectRef};
use blindpass_protocol::keys::TokenKeyId;
use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2::blind_rsa::{BlindSignError, RawSigner, RawVerifier};
use blindpass_protocol::type2::keys::IssuerPublicKey;
use blindpass_rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::issuer_key::RsaSigner;

/// The `custody` value of a PKCS#11 reference.
const PKCS11: &str = "pkcs11";

/// A PKCS#11 key as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pkcs11Reference {
    custody: String,
    /// CKA_ID, lowercase hex.
    object_id: String,
    /// CKA_LABEL.
    object_label: String,
    /// The `rsaEncryption` SubjectPublicKeyInfo, lowercase hex.
    public_key: String,
}

/// True when `stored` (opened) is a PKCS#11 reference rather than key bytes.
pub(crate) fn is_pkcs11_reference(stored: &[u8]) -> bool {
    stored.first() == Some(&b'{')
}

/// The stored form of a key kept in a token.
pub(crate) fn encode_pkcs11(object: &ObjectRef, public: &RsaPublicKey) -> Vec<u8> {
    let reference = Pkcs11Reference {
        custody: PKCS11.into(),
        object_id: hex::encode(&object.id),
        object_label: object.label.clone(),
        public_key: hex::encode(public.to_rsa_encryption_spki()),
    };
    serde_json::to_vec(&reference).unwrap_or_default()
}

/// Parses a stored PKCS#11 reference.
pub fn decode_pkcs11(stored: &[u8]) -> Result<(ObjectRef, RsaPublicKey), String> {
    let reference: Pkcs11Reference =
        serde_json::from_slice(stored).map_err(|e| format!("malformed PKCS#11 reference: {e}"))?;
    if reference.custody != PKCS11 {
        return Err(format!("unknown key custody {:?}", reference.custody));
    }
    let id = hex::decode(&reference.object_id).map_err(|e| format!("PKCS#11 object id: {e}"))?;
    let spki = hex::decode(&reference.public_key).map_err(|e| format!("PKCS#11 public key: {e}"))?;
    let public = RsaPublicKey::from_spki_der(&spki).map_err(|e| format!("PKCS#11 public key: {e}"))?;
    Ok((ObjectRef { id, label: reference.object_label }, public))
}

/// A type-2 key as stored: its public key and its signer. A PKCS#11 key on a
/// node without the token (`hsm` is `None`) still verifies; its signatures
/// answer "unavailable".
pub(crate) fn load_rsa(stored: &[u8], hsm: Option<&Hsm>) -> Result<(IssuerPublicKey, Arc<dyn RsaSigner>), String> {
    if !is_pkcs11_reference(stored) {
        let key = RsaPrivateKey::from_pkcs8_der(stored).map_err(|e| e.to_string())?;
        let public = IssuerPublicKey::new(key.public_key().clone()).map_err(|e| e.to_string())?;
        return Ok((public, Arc::new(key)));
    }
    let (object, public) = decode_pkcs11(stored)?;
    let issuer_key = IssuerPublicKey::new(public.clone()).map_err(|e| e.to_string())?;
    let signer: Arc<dyn RsaSigner> = match hsm {
        Some(hsm) => Arc::new(hsm.key(object, public)),
        None => {
            tracing::error!(
                object = %object.label,
                "an issuer key is kept in a PKCS#11 token but this node has no --signer pkcs11: it verifies, and answers 503 to issuance"
            );
            Arc::new(NoToken { object, public })
        }
    };
    Ok((issuer_key, signer))
}

/// A fresh type-2 key: in the token when there is one (the stored form is
/// then a reference, and the object is returned so that a key the caller
/// discards can be destroyed), else in software.
pub(crate) fn generate_rsa(hsm: Option<&Hsm>) -> Result<GeneratedRsa, String> {
    match hsm {
        Some(hsm) => {
            let (object, public) = hsm.generate_rsa_2048().map_err(|e| e.to_string())?;
            let id = IssuerPublicKey::new(public.clone()).map_err(|e| e.to_string())?.token_key_id();
            Ok(GeneratedRsa { id, stored: Zeroizing::new(encode_pkcs11(&object, &public)), object: Some(object) })
        }
        None => {
            let key = RsaPrivateKey::generate_2048().map_err(|e| e.to_string())?;
            let public = IssuerPublicKey::new(key.public_key().clone()).map_err(|e| e.to_string())?;
            let stored = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            Ok(GeneratedRsa { id: public.token_key_id(), stored, object: None })
        }
    }
}

/// A type-2 key just made.
pub(crate) struct GeneratedRsa {
    /// Its `token_key_id`.
    pub(crate) id: TokenKeyId,
    /// What the store keeps (PKCS#8, or a PKCS#11 reference).
    pub(crate) stored: Zeroizing<Vec<u8>>,
    /// Its token object, for a key made in the token.
    pub(crate) object: Option<ObjectRef>,
}

/// The signer of a token key on a node that has no token.
#[derive(Debug)]
struct NoToken {
    object: ObjectRef,
    public: RsaPublicKey,
}

impl RawSigner for NoToken {
    fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// Always unavailable (the error was logged when the key was loaded;
    /// readiness reports it).
    fn rsasp1(&self, _m: &[u8]) -> Result<Vec<u8>, BlindSignError> {
        tracing::debug!(object = %self.object.label, "cannot sign: this node has no PKCS#11 token (--signer pkcs11)");
        Err(BlindSignError::Unavailable)
    }
}

impl RawVerifier for NoToken {
    fn rsa_public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    fn rsavp1(&self, s: &[u8]) -> Option<Vec<u8>> {
        self.public.rsavp1(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reference_round_trips_and_holds_no_private_bytes() {
        let key = RsaPrivateKey::generate_2048().unwrap();
        let public = key.public_key().clone();
        let object = ObjectRef { id: vec![1, 2, 3], label: "blindpass-010203".into() };
        let stored = encode_pkcs11(&object, &public);
        assert!(is_pkcs11_reference(&stored));
        assert!(!is_pkcs11_reference(&key.to_pkcs8_der().unwrap()));
        assert_eq!(decode_pkcs11(&stored).unwrap(), (object, public));
        let (_, signer) = load_rsa(&stored, None).unwrap();
        assert_eq!(signer.rsasp1(&[1; 256]), Err(BlindSignError::Unavailable));
    }

    #[test]
    fn hostile_references_are_refused() {
        for bad in [
            &br#"{"custody":"pkcs11"}"#[..],
            br#"{"custody":"kms","object_id":"01","object_label":"x","public_key":"00"}"#,
            br#"{"custody":"pkcs11","object_id":"zz","object_label":"x","public_key":"00"}"#,
            br#"{"custody":"pkcs11","object_id":"01","object_label":"x","public_key":"3000"}"#,
            br#"{"custody":"pkcs11","object_id":"01","object_label":"x","public_key":"00","extra":1}"#,
            b"{",
        ] {
            assert!(load_rsa(bad, None).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
