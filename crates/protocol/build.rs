//! `BLINDPASS_TEST_PKCS11` as a cfg: without it the SoftHSM2 tests are
//! compiled `#[ignore]`d (shown as ignored, not passed). `.ci/run` installs
//! SoftHSM2 and sets it; the build reruns when it changes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(blindpass_test_pkcs11)");
    println!("cargo::rerun-if-env-changed=BLINDPASS_TEST_PKCS11");
    if std::env::var_os("BLINDPASS_TEST_PKCS11").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=blindpass_test_pkcs11");
    }
}
