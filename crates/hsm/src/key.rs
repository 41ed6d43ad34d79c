//! [`HsmKey`]: a key in the token as blindpass's RSA signer.

use std::sync::{Arc, Mutex, PoisonError};

use blindpass_protocol::rsa::RsaPublicKey;
use blindpass_protocol::type2::blind_rsa::{BlindSignError, RawSigner, RawVerifier};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::pool::Pool;
use crate::{HsmError, ObjectRef, failed, hex};

/// A private key in the token, with its public key (kept outside the token,
/// so that verification needs no token). `Debug` shows only the reference.
pub struct HsmKey {
    pool: Arc<Pool>,
    object: ObjectRef,
    public: RsaPublicKey,
    /// The private key's handle, found once per connection generation.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey").field("object", &self.object).finish_non_exhaustive()
    }
}

impl HsmKey {
    pub(crate) fn new(pool: Arc<Pool>, object: ObjectRef, public: RsaPublicKey) -> Self {
        Self { pool, object, public, handle: Mutex::new(None) }
    }

    /// The token object.
    pub fn object(&self) -> &ObjectRef {
        &self.object
    }

    /// RSASP1 by `CKM_RSA_X_509` in the token, without the fault check
    /// (see [`RawSigner::rsasp1`] for the checked operation).
    pub fn sign_raw(&self, m: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.pool.with_session(|session, generation| {
            let cached = *self.handle.lock().unwrap_or_else(PoisonError::into_inner);
            let handle = match cached {
                Some((g, handle)) if g == generation => handle,
                _ => self.find(session, generation)?,
            };
            match session.sign(&Mechanism::RsaX509, handle, m) {
                // The object was destroyed and made again, or the handle
                // went stale: look it up once more.
                Err(Error::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)) => {
                    let handle = self.find(session, generation)?;
                    session.sign(&Mechanism::RsaX509, handle, m).map_err(failed("C_Sign"))
                }
                other => other.map_err(failed("C_Sign")),
            }
        })
    }

    fn find(&self, session: &Session, generation: u64) -> Result<ObjectHandle, HsmError> {
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Id(self.object.id.clone()),
        ];
        let found = session.find_objects(&template).map_err(failed("C_FindObjects"))?;
        let [handle] = found.as_slice() else {
            if found.is_empty() {
                return Err(HsmError::KeyMissing(hex(&self.object.id)));
            }
            return Err(HsmError::Refused(format!(
                "{} private keys have CKA_ID {}",
                found.len(),
                hex(&self.object.id)
            )));
        };
        *self.handle.lock().unwrap_or_else(PoisonError::into_inner) = Some((generation, *handle));
        Ok(*handle)
    }
}

impl RawSigner for HsmKey {
    fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// RSASP1 in the token, then `s^e mod n == m` checked here.
    fn rsasp1(&self, m: &[u8]) -> Result<Vec<u8>, BlindSignError> {
        let k = self.public.modulus_len();
        // Never reduced: `m` is exactly k bytes and below n (big-endian, so
        // the byte order is the numeric order).
        if m.len() != k || m >= self.public.n() {
            return Err(BlindSignError::OutOfRange);
        }
        let s = self.sign_raw(m).map_err(|e| {
            if e.is_unavailable() {
                // The pool logs the token going and coming back; a line per
                // refused request would flood the log during an outage.
                tracing::debug!(object = %self.object.label, error = %e, "PKCS#11 signing unavailable");
                BlindSignError::Unavailable
            } else {
                tracing::error!(object = %self.object.label, error = %e, "PKCS#11 signing failed");
                BlindSignError::SigningFailure
            }
        })?;
        // Some tokens drop leading zero bytes: the integer is what counts.
        let s = match s.len() {
            len if len == k => s,
            len if len < k => [vec![0; k - len], s].concat(),
            _ => return Err(BlindSignError::SigningFailure),
        };
        match self.public.rsavp1(&s) {
            Some(em) if em == m => Ok(s),
            _ => {
                tracing::error!(object = %self.object.label, "PKCS#11 signature failed its fault check (s^e != m)");
                Err(BlindSignError::SigningFailure)
            }
        }
    }
}

impl RawVerifier for HsmKey {
    fn rsa_public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    fn rsavp1(&self, s: &[u8]) -> Option<Vec<u8>> {
        self.public.rsavp1(s)
    }
}
