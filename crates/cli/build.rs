//! Turns the `BLINDPASS_TEST_*` variables into cfgs, so that a test needing a
//! service the environment does not provide is compiled `#[ignore]`d: it shows
//! as *ignored* in the summary instead of passing without running. `.ci/run`
//! sets every variable; the build reruns when one changes.

fn main() {
    for (variable, cfg) in [
        ("BLINDPASS_TEST_POSTGRES_URL", "blindpass_test_postgres"),
        ("BLINDPASS_TEST_BACKEND_TLS", "blindpass_test_backend_tls"),
        ("BLINDPASS_TEST_INTEROP", "blindpass_test_interop"),
        ("BLINDPASS_TEST_PKCS11", "blindpass_test_pkcs11"),
        ("BLINDPASS_TEST_NGINX", "blindpass_test_nginx"),
        ("BLINDPASS_TEST_PG_FAILOVER", "blindpass_test_pg_failover"),
        ("BLINDPASS_TEST_FULL_DISK", "blindpass_test_full_disk"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={variable}");
        if std::env::var_os(variable).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
