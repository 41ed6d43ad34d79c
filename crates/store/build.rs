//! `BLINDPASS_TEST_POSTGRES_URL` as a cfg: without it the PostgreSQL
//! conformance test is compiled `#[ignore]`d (shown as ignored, not passed).
//! `.ci/run` sets it; the build reruns when it changes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(blindpass_test_postgres)");
    println!("cargo::rerun-if-env-changed=BLINDPASS_TEST_POSTGRES_URL");
    if std::env::var_os("BLINDPASS_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=blindpass_test_postgres");
    }
}
