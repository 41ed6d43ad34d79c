//! The one module with `unsafe`: a minimal, audited wrapper over aws-lc's
//! RSA private-key API.
//!
//! Every function here upholds the same rules:
//! - pointers passed to aws-lc point into live Rust buffers of the stated length;
//! - every aws-lc object created here is owned by exactly one RAII wrapper
//!   and freed exactly once (`BN_clear_free` for secrets, `RSA_free`);
//! - return codes are checked before any output is read, and the aws-lc
//!   error queue is cleared so a failure never leaks into a later call.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::ptr::{self, NonNull};

use aws_lc_sys as sys;
use zeroize::Zeroizing;

/// An aws-lc call failed. Carries no detail on purpose: the queue may
/// describe secret-dependent state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FfiError;

/// Big-endian RSA key components. Secret fields are zeroised on drop.
pub(crate) struct Components {
    pub(crate) n: Vec<u8>,
    pub(crate) e: Vec<u8>,
    pub(crate) d: Zeroizing<Vec<u8>>,
    pub(crate) p: Zeroizing<Vec<u8>>,
    pub(crate) q: Zeroizing<Vec<u8>>,
    pub(crate) dmp1: Zeroizing<Vec<u8>>,
    pub(crate) dmq1: Zeroizing<Vec<u8>>,
    pub(crate) iqmp: Zeroizing<Vec<u8>>,
}

/// An owned aws-lc `RSA` private key.
pub(crate) struct Rsa(NonNull<sys::RSA>);

// SAFETY: an `RSA` is not tied to the thread that created it. aws-lc guards
// the only state it mutates after construction (the lazily built Montgomery
// contexts in `freeze_private_key` and the blinding cache in
// `rsa_blinding_get`) with `rsa->lock`, so concurrent `RSA_sign_raw` and
// `RSA_verify_raw` calls on one key are safe; every other use here is
// read-only.
unsafe impl Send for Rsa {}
// SAFETY: see `Send` above; shared references only reach `RSA_sign_raw`,
// `RSA_verify_raw`, `RSA_size` and the `RSA_get0_*` getters, which are safe
// to call concurrently.
unsafe impl Sync for Rsa {}

impl Drop for Rsa {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from aws-lc, is owned solely by this wrapper and
        // is freed only here. `RSA_free` clears private material.
        unsafe { sys::RSA_free(self.0.as_ptr()) }
    }
}

impl Rsa {
    /// Generates a 2048-bit key with e = 65537 using aws-lc's FIPS 186-4
    /// key generation (which also runs a pairwise consistency test).
    pub(crate) fn generate_2048() -> Result<Self, FfiError> {
        // SAFETY: `RSA_new` returns an owned object or NULL; NULL is checked.
        let rsa = NonNull::new(unsafe { sys::RSA_new() }).ok_or(FfiError)?;
        let rsa = Rsa(rsa);
        // SAFETY: `rsa.0` is a valid, freshly allocated RSA; a NULL callback is allowed.
        let ok = unsafe { sys::RSA_generate_key_fips(rsa.0.as_ptr(), 2048, ptr::null_mut()) };
        check(ok)?;
        Ok(rsa)
    }

    /// Builds a CRT private key from its components and runs `RSA_check_key`
    /// (which verifies n = p·q, the CRT values and d·e ≡ 1).
    pub(crate) fn from_components(c: &Components) -> Result<Self, FfiError> {
        let n = Bn::from_bytes(&c.n)?;
        let e = Bn::from_bytes(&c.e)?;
        let d = Bn::from_bytes(&c.d)?;
        let p = Bn::from_bytes(&c.p)?;
        let q = Bn::from_bytes(&c.q)?;
        let dmp1 = Bn::from_bytes(&c.dmp1)?;
        let dmq1 = Bn::from_bytes(&c.dmq1)?;
        let iqmp = Bn::from_bytes(&c.iqmp)?;
        // SAFETY: all eight pointers are valid BIGNUMs owned by the `Bn`
        // wrappers above, which outlive the call; aws-lc copies them.
        let raw = unsafe {
            sys::RSA_new_private_key(
                n.0.as_ptr(),
                e.0.as_ptr(),
                d.0.as_ptr(),
                p.0.as_ptr(),
                q.0.as_ptr(),
                dmp1.0.as_ptr(),
                dmq1.0.as_ptr(),
                iqmp.0.as_ptr(),
            )
        };
        let rsa = Rsa(NonNull::new(raw).ok_or_else(clear_errors)?);
        // SAFETY: `rsa.0` is a valid RSA.
        check(unsafe { sys::RSA_check_key(rsa.0.as_ptr()) })?;
        Ok(rsa)
    }

    /// Modulus size in bytes.
    pub(crate) fn size(&self) -> usize {
        // SAFETY: `self.0` is a valid RSA with a modulus.
        unsafe { sys::RSA_size(self.0.as_ptr()) as usize }
    }

    /// Copies out every component.
    pub(crate) fn components(&self) -> Result<Components, FfiError> {
        let mut n = ptr::null();
        let mut e = ptr::null();
        let mut d = ptr::null();
        let mut p = ptr::null();
        let mut q = ptr::null();
        let mut dmp1 = ptr::null();
        let mut dmq1 = ptr::null();
        let mut iqmp = ptr::null();
        // SAFETY: `self.0` is valid; the getters write borrowed pointers (or
        // NULL) into the locals, which are read only while `self` is alive.
        unsafe {
            sys::RSA_get0_key(self.0.as_ptr(), &mut n, &mut e, &mut d);
            sys::RSA_get0_factors(self.0.as_ptr(), &mut p, &mut q);
            sys::RSA_get0_crt_params(self.0.as_ptr(), &mut dmp1, &mut dmq1, &mut iqmp);
        }
        Ok(Components {
            n: bn_to_bytes(n)?.to_vec(),
            e: bn_to_bytes(e)?.to_vec(),
            d: bn_to_bytes(d)?,
            p: bn_to_bytes(p)?,
            q: bn_to_bytes(q)?,
            dmp1: bn_to_bytes(dmp1)?,
            dmq1: bn_to_bytes(dmq1)?,
            iqmp: bn_to_bytes(iqmp)?,
        })
    }

    /// RSASP1 with no padding: `out = input^d mod n`, computed with aws-lc's
    /// blinded, constant-time CRT exponentiation, which also verifies
    /// `out^e mod n == input` before returning (the fault check) and refuses
    /// `input >= n - 1`, 0 and 1.
    pub(crate) fn sign_raw(&self, input: &[u8], out: &mut [u8]) -> Result<(), FfiError> {
        // `RSA_sign_raw` takes `*mut RSA` but only mutates lock-protected
        // caches (see the `Sync` impl).
        self.raw(sys::RSA_sign_raw, input, out)
    }

    /// RSAVP1 with no padding: `out = input^e mod n`. aws-lc refuses an
    /// `input >= n` (never reduces it).
    pub(crate) fn verify_raw(&self, input: &[u8], out: &mut [u8]) -> Result<(), FfiError> {
        // `RSA_verify_raw` takes `*mut RSA` but only reads the public key and
        // the lock-protected Montgomery context (see the `Sync` impl).
        self.raw(sys::RSA_verify_raw, input, out)
    }

    /// One of aws-lc's raw operations (`RSA_sign_raw`, `RSA_verify_raw`)
    /// without padding, on exactly modulus-length buffers.
    fn raw(&self, op: RawOperation, input: &[u8], out: &mut [u8]) -> Result<(), FfiError> {
        let size = self.size();
        if input.len() != size || out.len() != size {
            return Err(FfiError);
        }
        let mut written = 0usize;
        // SAFETY: `op` is one of the two functions above (the callers say
        // why a shared `RSA` is fine for each); `out` is a live buffer of
        // `out.len()` bytes and `input` of `input.len()` bytes; aws-lc writes
        // at most `max_out` bytes and sets `written`.
        let ok = unsafe {
            op(
                self.0.as_ptr(),
                &mut written,
                out.as_mut_ptr(),
                out.len(),
                input.as_ptr(),
                input.len(),
                sys::RSA_NO_PADDING as c_int,
            )
        };
        check(ok)?;
        if written != size {
            return Err(FfiError);
        }
        Ok(())
    }
}

/// The shape of aws-lc's `RSA_sign_raw` and `RSA_verify_raw`.
type RawOperation = unsafe extern "C" fn(*mut sys::RSA, *mut usize, *mut u8, usize, *const u8, usize, c_int) -> c_int;

/// An owned BIGNUM, cleared and freed on drop.
struct Bn(NonNull<sys::BIGNUM>);

impl Bn {
    fn from_bytes(bytes: &[u8]) -> Result<Self, FfiError> {
        // SAFETY: `bytes` is valid for `bytes.len()` bytes; a NULL `ret` asks
        // aws-lc to allocate a new BIGNUM, which we own.
        let raw = unsafe { sys::BN_bin2bn(bytes.as_ptr(), bytes.len(), ptr::null_mut()) };
        NonNull::new(raw).map(Bn).ok_or_else(clear_errors)
    }
}

impl Drop for Bn {
    fn drop(&mut self) {
        // SAFETY: `self.0` was allocated by `BN_bin2bn`, is owned solely by
        // this wrapper and freed only here.
        unsafe { sys::BN_clear_free(self.0.as_ptr()) }
    }
}

/// Serialises a borrowed BIGNUM big-endian, minimal length.
fn bn_to_bytes(bn: *const sys::BIGNUM) -> Result<Zeroizing<Vec<u8>>, FfiError> {
    if bn.is_null() {
        return Err(FfiError);
    }
    // SAFETY: `bn` is a non-NULL BIGNUM borrowed from a live RSA.
    let len = unsafe { sys::BN_num_bytes(bn) } as usize;
    let mut out = Zeroizing::new(vec![0u8; len]);
    // SAFETY: `out` has exactly `len` bytes, enough for `bn`.
    let ok = unsafe { sys::BN_bn2bin_padded(out.as_mut_ptr(), len, bn) };
    check(ok)?;
    Ok(out)
}

fn check(ok: c_int) -> Result<(), FfiError> {
    if ok == 1 { Ok(()) } else { Err(clear_errors()) }
}

fn clear_errors() -> FfiError {
    // SAFETY: clears this thread's aws-lc error queue; always safe.
    unsafe { sys::ERR_clear_error() }
    FfiError
}
