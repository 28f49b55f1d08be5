//! The demo gateway answers the requests its banner (and the README) shows, with the filters
//! built as Wasm modules and as native dynamic modules.

#![allow(clippy::panic)] // test code: a failure to run the demo fails the test

fn check(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatewasm-demo"))
        .arg("--check")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running gatewasm-demo: {e}")); // ok: test code
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_gateway_answers_as_the_readme_says() {
    check(&[]);
}

#[test]
fn demo_gateway_answers_the_same_with_native_modules() {
    check(&["--native"]);
}
